#ifndef VIRTPORT_CNFTNL_SHIM_H
#define VIRTPORT_CNFTNL_SHIM_H
/* <netinet/in.h> must come before the kernel headers (in_addr clash with Glibc). */
#include <netinet/in.h>
#include <sys/socket.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <linux/netlink.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nf_tables.h>
#include <libmnl/libmnl.h>
#include <libnftnl/batch.h>
#include <libnftnl/common.h>
#include <libnftnl/table.h>
#include <libnftnl/chain.h>
#include <libnftnl/rule.h>
#include <libnftnl/set.h>
#include <libnftnl/expr.h>
#include <libnftnl/udata.h>
#include <libnftnl/object.h>
#include <linux/rtnetlink.h>
#include <linux/if_link.h>

/* Macros Swift cannot import. */
static inline size_t vp_mnl_socket_buffer_size(void) { return MNL_SOCKET_BUFFER_SIZE; }
static inline int vp_errno(void) { return errno; }

/* Builds a netlink message header for an nf_tables message type; returns the header. */
static inline struct nlmsghdr *vp_nft_nlmsg_build_hdr(char *buf, uint16_t type, uint16_t family,
                                                      uint16_t flags, uint32_t seq) {
    return nftnl_nlmsg_build_hdr(buf, type, family, flags, seq);
}

/* setns(2) is _GNU_SOURCE-only in glibc's <sched.h>, which Swift's Glibc module does not expose.
 * Moves the calling thread into the network namespace open at `fd`.
 * Returns 0, or -1 with errno set. Needs CAP_SYS_ADMIN. */
static inline int vp_setns_net(int fd) {
    return (int)syscall(SYS_setns, fd, 0x40000000 /* CLONE_NEWNET */);
}
#endif
