#ifndef VIRTPORT_CLIBVIRT_SHIM_H
#define VIRTPORT_CLIBVIRT_SHIM_H
/* Types and prototypes only: nothing links libvirt. The agent/CLI dlopen("libvirt.so.0") and
   look functions up by name, so the hook process never maps libvirt and its dependencies. */
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <dlfcn.h>
#endif
