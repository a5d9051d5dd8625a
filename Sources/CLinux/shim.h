#ifndef VIRTPORT_CLINUX_SHIM_H
#define VIRTPORT_CLINUX_SHIM_H
/* Linux interfaces Glibc's Swift module does not export, for POSIX: the agent's event loop (epoll,
   eventfd), its file watches (inotify) and raw netlink sockets. Headers only, nothing to link.
   <netinet/in.h> comes before the kernel headers (in_addr clash with Glibc). */
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <linux/netlink.h>
#endif
