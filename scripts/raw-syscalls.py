#!/usr/bin/env python3
"""Counts raw system calls (section 2, plus pthread/sleep) named directly in Sources outside Sources/POSIX.
Comments and string literals are ignored; a name declared as `func NAME` in the same file is a
Swift method, not the C call; `x.name(` is a method unless x is Glibc/CLinux.

    python3 scripts/raw-syscalls.py [Sources] [-f: per file] [-v: every call]

Issue 23 (the OS layer): 121 on f8275a1 (before), 39 after (branch agentos merged with main 9e429fa)."""
import re, sys, os, collections
CALLS = """open openat close read write pread pwrite recv recvfrom recvmsg send sendto sendmsg socket bind
listen accept accept4 connect setsockopt getsockopt getsockname shutdown epoll_create1 epoll_ctl epoll_wait
eventfd inotify_init1 inotify_add_watch inotify_rm_watch pipe pipe2 fork poll fcntl flock stat lstat fstat
unlink rename mkdir rmdir kill usleep nanosleep pthread_create pthread_detach pthread_mutex_lock
pthread_mutex_unlock pthread_cond_timedwait pthread_cond_wait pthread_cond_broadcast pthread_cond_signal
pthread_mutex_init pthread_cond_init clock_gettime setns vp_setns_net umask ftruncate fsync fdatasync mmap munmap
waitpid dup dup2 chmod fchmod chown symlink readlink access getrlimit setrlimit ioctl _exit opendir readdir
mnl_socket_open2 mnl_socket_bind mnl_socket_sendto mnl_socket_close""".split()
pat = re.compile(r'(?<![A-Za-z0-9_`])((?:Glibc\.|CLinux\.)?)(' + '|'.join(CALLS) + r')\s*\(')
root = sys.argv[1] if len(sys.argv) > 1 else 'Sources'
total = 0; per = collections.Counter()
for d, _, fs in os.walk(root):
    for f in fs:
        if not f.endswith('.swift'): continue
        p = os.path.join(d, f)
        if '/POSIX/' in p: continue
        src = open(p).read()
        declared = set(re.findall(r'(?:func|let|var)\s+([A-Za-z_][A-Za-z0-9_]*)', src))
        for line in src.split('\n'):
            s = line.split('//')[0]
            s = re.sub(r'"(\\.|[^"\\])*"', '""', s)
            for m in pat.finditer(s):
                start = m.start()
                if m.group(1) == '' and start > 0 and s[start-1] == '.': continue
                if m.group(1) == '' and m.group(2) in declared: continue
                if re.search(r'func\s+$', s[:start]): continue
                if m.group(2) == 'stat' and s[m.end():].startswith(')'): continue  # `stat()`: the struct
                total += 1; per[p] += 1
                if '-v' in sys.argv: print(p, m.group(0), '|', line.strip()[:100])
print(total)
if '-f' in sys.argv:
    for p, n in per.most_common(): print(n, p)
