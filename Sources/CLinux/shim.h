#ifndef VIRTPORT_CLINUX_SHIM_H
#define VIRTPORT_CLINUX_SHIM_H
/* Linux interfaces Glibc's Swift module does not export: the agent's event loop (epoll, eventfd)
   and its file watches (inotify). Headers only, nothing to link. */
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#endif
