/* vpbench: the small helpers bench/run times things with. C, so that they add no interpreter or
 * shell time to what they measure. Built by bench/run with the system C compiler.
 *
 *   vpbench stdin FILE CMD [ARG...]     exec CMD with FILE as stdin (hyperfine 1.15 has no --input,
 *                                       and a shell would add its own start-up to every sample)
 *   vpbench each [-k] FILE              run each line of FILE as one command (argv split on blanks,
 *                                       the first word an absolute path), one after another, stdin
 *                                       /dev/null: "one process per rule". Stops at the first
 *                                       non-zero exit; with -k runs them all and exits 0 (cleanup)
 *   vpbench settle CMD [ARG...]         run CMD (a hyperfine --prepare), wait for it, then wait until
 *                                       the kernel has finished nf_tables' deferred destruction of
 *                                       what CMD deleted: the release of a NETLINK_NETFILTER socket
 *                                       flushes that work (an RCU grace period, ~10 ms), so opening
 *                                       and closing one blocks until it is done. The timed command
 *                                       then starts with the kernel idle instead of paying for its
 *                                       prepare's deletes.
 *   vpbench settle -l LOCK CMD [ARG...] the same, then take LOCK (the journal's change lock file)
 *                                       exclusively and let it go: the agent holds it shared until
 *                                       its work after a hook's answer is done, so the timed command
 *                                       does not pay for its prepare's late work either (a missing
 *                                       file is no wait).
 *   vpbench serve ADDR PORT             TCP listener: accept and close, forever
 *   vpbench connect ADDR PORT SECONDS   new TCP connections, one at a time, for SECONDS; each is
 *                                       connected (3-way handshake done) then reset (SO_LINGER 0, so
 *                                       no TIME_WAIT piles up); prints "CONNECTIONS SECONDS RATE"
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/netlink.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static int die(const char *what) {
    fprintf(stderr, "vpbench: %s: %s\n", what, strerror(errno));
    return 1;
}

static int cmd_stdin(int argc, char **argv) {
    if (argc < 4) { fprintf(stderr, "usage: vpbench stdin FILE CMD [ARG...]\n"); return 2; }
    int fd = open(argv[2], O_RDONLY | O_CLOEXEC);
    if (fd < 0) return die(argv[2]);
    if (dup2(fd, 0) < 0) return die("dup2");
    execv(argv[3], &argv[3]);
    return die(argv[3]);
}

static int cmd_each(int argc, char **argv) {
    int keep_going = argc == 4 && !strcmp(argv[2], "-k");
    if (argc != 3 + keep_going) { fprintf(stderr, "usage: vpbench each [-k] FILE\n"); return 2; }
    const char *path = argv[2 + keep_going];
    FILE *f = fopen(path, "r");
    if (!f) return die(path);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (keep_going) posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    char *line = NULL;
    size_t cap = 0;
    int n = 0;
    while (getline(&line, &cap, f) > 0) {
        char *args[64];
        int k = 0;
        for (char *tok = strtok(line, " \t\n"); tok && k < 63; tok = strtok(NULL, " \t\n")) args[k++] = tok;
        args[k] = NULL;
        if (k == 0) continue;
        pid_t pid;
        int rc = posix_spawn(&pid, args[0], &fa, NULL, args, environ);
        if (rc) { errno = rc; return die(args[0]); }
        int st;
        if (waitpid(pid, &st, 0) < 0) return die("waitpid");
        n++;
        if (!keep_going && (!WIFEXITED(st) || WEXITSTATUS(st) != 0)) {
            fprintf(stderr, "vpbench each: command %d (%s ...) failed with status %d\n", n, args[0], st);
            return 1;
        }
    }
    return 0;
}

static int parse_addr(const char *addr, const char *port, struct sockaddr_in *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(port));
    return inet_pton(AF_INET, addr, &sa->sin_addr) == 1 ? 0 : -1;
}

static int cmd_serve(int argc, char **argv) {
    struct sockaddr_in sa;
    if (argc != 4 || parse_addr(argv[2], argv[3], &sa)) { fprintf(stderr, "usage: vpbench serve ADDR PORT\n"); return 2; }
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&sa, sizeof sa) < 0) return die("bind");
    if (listen(s, 4096) < 0) return die("listen");
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c >= 0) close(c);
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmd_connect(int argc, char **argv) {
    struct sockaddr_in sa;
    if (argc != 5 || parse_addr(argv[2], argv[3], &sa)) {
        fprintf(stderr, "usage: vpbench connect ADDR PORT SECONDS\n");
        return 2;
    }
    double seconds = atof(argv[4]);
    struct linger lg = {1, 0};
    long n = 0, failed = 0;
    double t0 = now(), t = t0;
    while (t - t0 < seconds) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (s < 0) return die("socket");
        setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        if (connect(s, (struct sockaddr *)&sa, sizeof sa) == 0) n++;
        else if (++failed > 10) return die("connect");
        close(s);
        if ((n & 63) == 0) t = now();
    }
    t = now();
    printf("%ld %.6f %.1f\n", n, t - t0, n / (t - t0));
    return failed ? 1 : 0;
}

static int cmd_settle(int argc, char **argv) {
    const char *lock = NULL;
    int first = 2;
    if (argc >= 4 && !strcmp(argv[2], "-l")) { lock = argv[3]; first = 4; }
    if (argc < first + 1) { fprintf(stderr, "usage: vpbench settle [-l LOCK] CMD [ARG...]\n"); return 2; }
    pid_t pid;
    int rc = posix_spawn(&pid, argv[first], NULL, NULL, &argv[first], environ);
    if (rc != 0) { errno = rc; return die(argv[first]); }
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return die("waitpid");
    int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
    if (s < 0) return die("netlink socket");
    struct sockaddr_nl sa = {.nl_family = AF_NETLINK};
    if (bind(s, (struct sockaddr *)&sa, sizeof sa) != 0) return die("netlink bind");
    close(s);
    if (lock) {
        int fd = open(lock, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            while (flock(fd, LOCK_EX) < 0 && errno == EINTR) {}
            close(fd);
        }
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "settle")) return cmd_settle(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "stdin")) return cmd_stdin(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "each")) return cmd_each(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "serve")) return cmd_serve(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "connect")) return cmd_connect(argc, argv);
    fprintf(stderr, "usage: vpbench stdin|each|settle|serve|connect ...\n");
    return 2;
}
