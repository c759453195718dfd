/*
 * hearth-exec: the guest half of the qemu sandbox's exec and workspace sync
 * (host half: agent/sandbox/qemu.py). Built statically into the guest image by
 * agent/sandbox/image.py, because under TCG every dynamically linked process start
 * costs ~100 ms; this one process does what a shell wrapper needed find, tar and a
 * subshell for.
 *
 *   hearth-exec init                PID 1 of the guest (see init_main).
 *   hearth-exec run CWD COMMAND SUFFIX TOKEN [keep] [HOST_TIME_NS]
 *       1. applies /run/hearth/in.sync (the host's changes) to /workspace, if present;
 *       2. runs `bash -c COMMAND` in CWD, in the task cgroup, in its own session, stdin
 *          /dev/null, stdout/stderr to /run/hearth/{o,e}SUFFIX (the host tails these to
 *          stream output while the command runs);
 *          When it exits, whatever it left running in the cgroup is killed (like the bwrap
 *          backend, whose pid namespace dies with the shell) unless "keep" is given;
 *       3. walks /workspace for entries whose ctime is newer than the last stamp and
 *          packs the changed files and symlinks as sync records;
 *       4. writes to its own stdout: the command's stdout + the sync records, and to its
 *          own stderr: the command's stderr + the changed list + (if a directory changed)
 *          the full listing + TOKEN + a header line with the lengths; qemu-ga captures
 *          both, so the host gets everything in one guest-exec-status answer;
 *       5. exits with the command's status (128+N for a signal).
 *       HOST_TIME_NS moves the guest clock forward when it lags (after a loadvm the guest
 *       clock resumes from the snapshot's time); it is never moved back, so the ctime
 *       comparisons above stay sound.
 *   hearth-exec setup RESERVE_MIB   apply in.sync, cap the task cgroup memory, stamp.
 *   hearth-exec apply               apply in.sync (host changes made while a command runs).
 *   hearth-exec kill                kill everything in the task cgroup (cgroup.kill).
 *
 * Sync record (little endian): type u8 ('f' file, 'l' symlink, 'd' dir, 'x' delete)
 *   | mode u32 | mtime_ns i64 | path_len u32 | path | data_len u64 | data
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <net/if.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define WS "/workspace"
#define H "/run/hearth"
#define OUTSYNC "/var/lib/hearth/out.sync"
#define CG "/sys/fs/cgroup/hearth"
#define INLINE_MAX (12u << 20) /* qemu-ga captures at most 16 MiB per stream */
#define FILE_MAX ((off_t)256 << 20)

extern char **environ;

typedef struct {
    char *p;
    size_t n, cap;
} buf_t;

static void bput(buf_t *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        size_t c = b->cap ? b->cap * 2 : 65536;
        while (c < b->n + n)
            c *= 2;
        b->p = realloc(b->p, c);
        if (!b->p) {
            perror("hearth-exec: realloc");
            exit(120);
        }
        b->cap = c;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int copy_fd(int from, int to, uint64_t n)
{
    char buf[1 << 16];
    while (n) {
        ssize_t r = read(from, buf, n < sizeof buf ? n : sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) { /* file shrank: pad so the framing stays right */
            memset(buf, 0, sizeof buf);
            r = (ssize_t)(n < sizeof buf ? n : sizeof buf);
        }
        if (write_all(to, buf, (size_t)r))
            return -1;
        n -= (uint64_t)r;
    }
    return 0;
}

static char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NULL;
    buf_t b = {0};
    char tmp[1 << 16];
    ssize_t r;
    while ((r = read(fd, tmp, sizeof tmp)) > 0)
        bput(&b, tmp, (size_t)r);
    close(fd);
    *len = b.n;
    return b.p ? b.p : calloc(1, 1);
}

/* ---- applying the host's delta ---------------------------------------------------------- */

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *f)
{
    (void)st;
    (void)f;
    if (flag == FTW_DP)
        rmdir(p);
    else
        unlink(p);
    return 0;
}

static void rm_rf(const char *p)
{
    struct stat st;
    if (lstat(p, &st))
        return;
    if (S_ISDIR(st.st_mode))
        nftw(p, rm_cb, 32, FTW_DEPTH | FTW_PHYS);
    else
        unlink(p);
}

static void mkparents(char *path)
{
    for (char *s = path; (s = strchr(s, '/')); s++) {
        struct stat st;
        *s = 0;
        if (lstat(path, &st) == 0 && !S_ISDIR(st.st_mode))
            unlink(path);
        mkdir(path, 0755);
        *s = '/';
    }
}

static int bad_path(const char *p)
{
    if (!*p || *p == '/')
        return 1;
    for (const char *s = p; s; s = strchr(s, '/')) {
        if (*s == '/')
            s++;
        if (!strncmp(s, "..", 2) && (s[2] == '/' || !s[2]))
            return 1;
    }
    return 0;
}

static void apply(const char *file)
{
    size_t n = 0;
    char *d = slurp(file, &n);
    if (!d)
        return;
    size_t i = 0;
    while (i + 17 <= n) {
        char type = d[i];
        uint32_t mode, plen;
        int64_t mt;
        uint64_t dlen;
        memcpy(&mode, d + i + 1, 4);
        memcpy(&mt, d + i + 5, 8);
        memcpy(&plen, d + i + 13, 4);
        i += 17;
        if (i + plen + 8 > n)
            break;
        char *path = strndup(d + i, plen);
        i += plen;
        memcpy(&dlen, d + i, 8);
        i += 8;
        if (i + dlen > n) {
            free(path);
            break;
        }
        const char *data = d + i;
        i += dlen;
        if (bad_path(path)) {
            free(path);
            continue;
        }
        mkparents(path);
        struct stat st;
        int exists = lstat(path, &st) == 0;
        if (type == 'x') {
            rm_rf(path);
        } else if (type == 'd') {
            if (exists && !S_ISDIR(st.st_mode))
                unlink(path);
            mkdir(path, mode & 07777);
            chmod(path, mode & 07777);
        } else if (type == 'l') {
            if (exists)
                rm_rf(path);
            char *t = strndup(data, dlen);
            if (symlink(t, path))
                perror(path);
            free(t);
        } else if (type == 'f') {
            if (exists)
                rm_rf(path);
            int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, mode & 07777);
            if (fd < 0) {
                perror(path);
            } else {
                write_all(fd, data, dlen);
                fchmod(fd, mode & 07777);
                struct timespec ts[2] = {{mt / 1000000000, mt % 1000000000},
                                         {mt / 1000000000, mt % 1000000000}};
                futimens(fd, ts);
                close(fd);
            }
        }
        free(path);
    }
    free(d);
}

static void apply_pending(void)
{
    const char *in = H "/in.sync";
    struct stat st;
    if (stat(in, &st) == 0) {
        if (st.st_size > 0)
            apply(in);
        unlink(in);
    }
}

/* stamp: its mtime is the threshold for "changed"; returns the old one and re-stamps. */
static struct timespec restamp(void)
{
    struct timespec old = {0, 0};
    struct stat st;
    if (stat(H "/stamp", &st) == 0)
        old = st.st_mtim;
    int fd = open(H "/stamp", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        write_all(fd, "s\n", 2);
        close(fd);
    }
    return old;
}

/* ---- walking the workspace -------------------------------------------------------------- */

static struct timespec T_old;
static buf_t changed, all;
static int dir_changed, sync_fd = -1;
static uint64_t sync_len;
static buf_t skipped;

static int newer(const struct stat *st)
{
    return st->st_ctim.tv_sec > T_old.tv_sec ||
           (st->st_ctim.tv_sec == T_old.tv_sec && st->st_ctim.tv_nsec > T_old.tv_nsec);
}

static void put_entry(buf_t *b, char t, const char *p)
{
    bput(b, &t, 1);
    bput(b, " ", 1);
    bput(b, p, strlen(p) + 1);
}

static void record(char t, const struct stat *st, const char *path)
{
    char link[PATH_MAX];
    uint64_t dlen = 0;
    int fd = -1;
    if (t == 'l') {
        ssize_t r = readlink(path, link, sizeof link);
        if (r < 0)
            return;
        dlen = (uint64_t)r;
    } else {
        if (st->st_size > FILE_MAX) {
            put_entry(&skipped, 'f', path);
            return;
        }
        fd = open(path, O_RDONLY | O_NOFOLLOW);
        if (fd < 0)
            return;
        dlen = (uint64_t)st->st_size;
    }
    char hdr[17];
    uint32_t mode = st->st_mode & 07777, plen = (uint32_t)strlen(path);
    int64_t mt = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec;
    hdr[0] = t;
    memcpy(hdr + 1, &mode, 4);
    memcpy(hdr + 5, &mt, 8);
    memcpy(hdr + 13, &plen, 4);
    int bad = write_all(sync_fd, hdr, 17) || write_all(sync_fd, path, plen) ||
              write_all(sync_fd, (const char *)&dlen, 8);
    if (!bad)
        bad = t == 'l' ? write_all(sync_fd, link, dlen) : copy_fd(fd, sync_fd, dlen);
    if (fd >= 0)
        close(fd);
    if (bad) {
        perror("hearth-exec: writing sync records");
        exit(121);
    }
    sync_len += 17 + plen + 8 + dlen;
}

static void walk(char *path, size_t len)
{
    DIR *dir = opendir(len ? path : ".");
    if (!dir)
        return;
    struct dirent *e;
    while ((e = readdir(dir))) {
        const char *nm = e->d_name;
        if (nm[0] == '.' && (!nm[1] || (nm[1] == '.' && !nm[2])))
            continue;
        size_t nl = strlen(nm), cl = len ? len + 1 + nl : nl;
        if (cl >= PATH_MAX)
            continue;
        if (len)
            path[len] = '/';
        memcpy(path + (len ? len + 1 : 0), nm, nl + 1);
        struct stat st;
        if (lstat(path, &st) == 0) {
            char t = S_ISDIR(st.st_mode) ? 'd' : S_ISREG(st.st_mode) ? 'f' : S_ISLNK(st.st_mode) ? 'l' : 0;
            if (t) {
                put_entry(&all, t, path);
                if (newer(&st)) {
                    put_entry(&changed, t, path);
                    if (t == 'd')
                        dir_changed = 1;
                    else
                        record(t, &st, path);
                }
                if (t == 'd')
                    walk(path, cl);
            }
        }
        path[len] = 0;
    }
    closedir(dir);
}

/* ---- clock ----------------------------------------------------------------------------- */

static void catch_up_clock(const char *host_ns)
{
    long long want = atoll(host_ns);
    if (want <= 0)
        return;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    long long have = (long long)now.tv_sec * 1000000000LL + now.tv_nsec;
    if (want - have > 200000000LL) { /* only forward, only when it matters */
        struct timespec ts = {want / 1000000000LL, want % 1000000000LL};
        clock_settime(CLOCK_REALTIME, &ts);
    }
}

/* ---- PID 1 ------------------------------------------------------------------------------ */

static void put(const char *path, const char *value)
{
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, value, strlen(value)) < 0)
        fprintf(stderr, "hearth-init: %s: %s\n", path, strerror(errno));
    if (fd >= 0)
        close(fd);
}

static void mnt(const char *src, const char *dst, const char *type, unsigned long flags, const char *opts)
{
    mkdir(dst, 0755);
    if (mount(src, dst, type, flags, opts) && errno != EBUSY)
        fprintf(stderr, "hearth-init: mount %s: %s\n", dst, strerror(errno));
}

static void spawn_wait(char *const argv[])
{
    pid_t p = fork();
    if (p == 0) {
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    if (p > 0)
        waitpid(p, &st, 0);
}

/*
 * Mounts, limits, networking and the agent, with no shell: under TCG each process start
 * of a shell script costs 0.1-0.2 s, and a boot used to spend seconds on them.
 * Kernel parameters: hearth.pids=N, hearth.cpu_max=QUOTA,PERIOD, hearth.net=nat.
 */
static int init_main(void)
{
    mnt("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mnt("sys", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    mnt("dev", "/dev", "devtmpfs", MS_NOSUID, NULL);
    mnt("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=620,ptmxmode=666");
    mnt("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mnt("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=755");
    mnt("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    mnt("tmpfs", "/root", "tmpfs", MS_NOSUID | MS_NODEV, "mode=700");
    mnt("tmpfs", "/var/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
    put("/proc/self/oom_score_adj", "-1000"); /* inherited by the agent; tasks reset it */
    sethostname("hearth", 6);
    int sk = socket(AF_INET, SOCK_DGRAM, 0);
    if (sk >= 0) {
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        strcpy(ifr.ifr_name, "lo");
        if (ioctl(sk, SIOCGIFFLAGS, &ifr) == 0) {
            ifr.ifr_flags |= IFF_UP;
            ioctl(sk, SIOCSIFFLAGS, &ifr);
        }
        close(sk);
    }

    char pids[32] = "256", cpu[64] = "", net[16] = "none";
    size_t n = 0;
    char *cl = slurp("/proc/cmdline", &n);
    for (char *tok = cl ? strtok(cl, " \n") : NULL; tok; tok = strtok(NULL, " \n")) {
        if (!strncmp(tok, "hearth.pids=", 12))
            snprintf(pids, sizeof pids, "%s", tok + 12);
        else if (!strncmp(tok, "hearth.cpu_max=", 15))
            snprintf(cpu, sizeof cpu, "%s", tok + 15);
        else if (!strncmp(tok, "hearth.net=", 11))
            snprintf(net, sizeof net, "%s", tok + 11);
    }
    free(cl);
    for (char *c = cpu; *c; c++)
        if (*c == ',')
            *c = ' ';

    /* Task commands run in /sys/fs/cgroup/hearth; this init and the agent stay outside. */
    mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    put("/sys/fs/cgroup/cgroup.subtree_control", "+memory +pids +cpu");
    mkdir(CG, 0755);
    put(CG "/pids.max", pids);
    if (*cpu)
        put(CG "/cpu.max", cpu);

    if (!strcmp(net, "nat")) {
        char *up[] = {"/bin/busybox", "ip", "link", "set", "eth0", "up", NULL};
        char *addr[] = {"/bin/busybox", "ip", "addr", "add", "10.0.2.15/24", "dev", "eth0", NULL};
        char *route[] = {"/bin/busybox", "ip", "route", "add", "default", "via", "10.0.2.2", NULL};
        spawn_wait(up);
        spawn_wait(addr);
        spawn_wait(route);
        int fd = open("/etc/resolv.conf", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            write_all(fd, "nameserver 10.0.2.3\n", 20);
            close(fd);
        }
    }

    /* The root filesystem is read-only to tasks (like the bwrap backend): only /workspace,
     * the tmpfs mounts above and the helper's scratch stay writable. */
    mkdir(WS, 0755);
    mkdir(H, 0755);
    mkdir("/var/lib/hearth", 0755);
    mnt(WS, WS, NULL, MS_BIND, NULL);
    mnt("/var/lib/hearth", "/var/lib/hearth", NULL, MS_BIND, NULL);
    if (mount(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL))
        fprintf(stderr, "hearth-init: read-only /: %s\n", strerror(errno));

    /* /dev/virtio-ports/<name> links (there is no udev) */
    mkdir("/dev/virtio-ports", 0755);
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char p[PATH_MAX], link[PATH_MAX], target[PATH_MAX];
        snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", e->d_name);
        size_t nl = 0;
        char *name = slurp(p, &nl);
        if (!name)
            continue;
        name[strcspn(name, "\n")] = 0;
        snprintf(link, sizeof link, "/dev/virtio-ports/%s", name);
        snprintf(target, sizeof target, "/dev/%s", e->d_name);
        symlink(target, link);
        free(name);
    }
    if (d)
        closedir(d);

    struct timespec up;
    clock_gettime(CLOCK_BOOTTIME, &up);
    char msg[64];
    int ml = snprintf(msg, sizeof msg, "HEARTH-READY uptime=%ld.%02ld\n", (long)up.tv_sec, up.tv_nsec / 10000000);
    int con = open("/dev/ttyS0", O_WRONLY | O_NOCTTY);
    if (con >= 0) {
        write_all(con, msg, (size_t)ml);
        close(con);
    }

    /* Run the agent forever (a task's `kill -9 -1` only restarts it); reap every orphan. */
    for (;;) {
        pid_t agent = fork();
        if (agent == 0) {
            char *argv[] = {"/usr/sbin/qemu-ga", "-m", "virtio-serial", "-p",
                            "/dev/virtio-ports/org.qemu.guest_agent.0", NULL};
            execv(argv[0], argv);
            _exit(127);
        }
        for (;;) {
            int st;
            pid_t p = wait(&st);
            if (p == agent || (p < 0 && errno == ECHILD))
                break;
        }
        struct timespec ts = {0, 200000000};
        nanosleep(&ts, NULL);
    }
}

/* ---- main ------------------------------------------------------------------------------- */

static int kill_tasks(void)
{
    int fd = open(CG "/cgroup.kill", O_WRONLY);
    if (fd < 0 || write(fd, "1", 1) < 0) {
        perror("hearth-exec: cgroup.kill");
        if (fd >= 0)
            close(fd);
        return 1;
    }
    close(fd);
    /* wait (bounded) until the cgroup is empty */
    for (int i = 0; i < 400; i++) {
        size_t n = 0;
        char *ev = slurp(CG "/cgroup.events", &n);
        int empty = ev && strstr(ev, "populated 0") != NULL;
        free(ev);
        if (empty)
            break;
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static int run(const char *cwd, const char *cmd, const char *suffix, const char *token, int keep)
{
    char opath[256], epath[256];
    snprintf(opath, sizeof opath, H "/o%s", suffix);
    snprintf(epath, sizeof epath, H "/e%s", suffix);
    int ofd = open(opath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    int efd = open(epath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (ofd < 0 || efd < 0) {
        perror("hearth-exec: output files");
        return 120;
    }
    if (chdir(WS)) {
        perror(WS);
        return 120;
    }
    apply_pending();

    pid_t pid = fork();
    if (pid < 0) {
        perror("hearth-exec: fork");
        return 120;
    }
    if (pid == 0) {
        int fd = open("/proc/self/oom_score_adj", O_WRONLY);
        if (fd >= 0) {
            write_all(fd, "0", 1);
            close(fd);
        }
        int in = open("/dev/null", O_RDONLY);
        dup2(in, 0);
        dup2(ofd, 1);
        dup2(efd, 2);
        fd = open(CG "/cgroup.procs", O_WRONLY);
        if (fd < 0 || write(fd, "0", 1) < 0) {
            perror("hearth-exec: joining the task cgroup");
            _exit(125);
        }
        close(fd);
        setsid();
        if (chdir(cwd)) {
            fprintf(stderr, "hearth-exec: cd %s: %s\n", cwd, strerror(errno));
            _exit(126);
        }
        const char *sh = access("/bin/bash-static", X_OK) == 0 ? "/bin/bash-static" : "/bin/bash";
        char *argv[] = {"bash", "-c", (char *)cmd, NULL};
        execve(sh, argv, environ);
        perror(sh);
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    int rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (!keep)
        kill_tasks();

    /* what changed */
    T_old = restamp();
    mkdir("/var/lib/hearth", 0755);
    sync_fd = open(OUTSYNC, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (sync_fd < 0) {
        perror(OUTSYNC);
        return 120;
    }
    struct stat rst;
    if (stat(".", &rst) == 0 && newer(&rst)) {
        dir_changed = 1;
        put_entry(&changed, 'd', "");
    }
    char path[PATH_MAX] = "";
    walk(path, 0);

    /* hand everything over through our own stdout/stderr (captured by qemu-ga) */
    struct stat ost, est;
    fstat(ofd, &ost);
    fstat(efd, &est);
    uint64_t olen = (uint64_t)ost.st_size, elen = (uint64_t)est.st_size;
    int flags = 0;
    if (olen + elen > INLINE_MAX)
        flags |= 1; /* output stays in the o/e files */
    if (sync_len + ((flags & 1) ? 0 : olen) > INLINE_MAX)
        flags |= 2; /* sync records stay in OUTSYNC */
    if (dir_changed)
        flags |= 8;
    if (dir_changed && all.n > (4u << 20))
        flags |= 4; /* listing stays in /run/hearth/all */
    if (flags & 1) {
        olen = elen = 0;
    } else {
        int r1 = open(opath, O_RDONLY), r2 = open(epath, O_RDONLY);
        copy_fd(r1, 1, olen);
        copy_fd(r2, 2, elen);
        close(r1);
        close(r2);
        unlink(opath);
        unlink(epath);
    }
    uint64_t slen = 0;
    if (!(flags & 2) && sync_len) {
        lseek(sync_fd, 0, SEEK_SET);
        copy_fd(sync_fd, 1, sync_len);
        slen = sync_len;
    }
    close(sync_fd);
    write_all(2, changed.p ? changed.p : "", changed.n);
    uint64_t alen = 0;
    if (dir_changed) {
        if (flags & 4) {
            int fd = open(H "/all", O_WRONLY | O_CREAT | O_TRUNC, 0600);
            write_all(fd, all.p, all.n);
            close(fd);
        } else {
            write_all(2, all.p, all.n);
            alen = all.n;
        }
    }
    write_all(2, skipped.p ? skipped.p : "", skipped.n);
    char tail[256];
    int tl = snprintf(tail, sizeof tail, "%s %llu %llu %llu %llu %llu %llu %d %llu\n", token,
                      (unsigned long long)olen, (unsigned long long)elen, (unsigned long long)slen,
                      (unsigned long long)changed.n, (unsigned long long)alen,
                      (unsigned long long)skipped.n, flags, (unsigned long long)sync_len);
    write_all(2, tail, (size_t)tl);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "init"))
        return init_main();
    if (argc >= 6 && !strcmp(argv[1], "run")) {
        int keep = 0;
        for (int i = 6; i < argc; i++) {
            if (!strcmp(argv[i], "keep"))
                keep = 1;
            else
                catch_up_clock(argv[i]);
        }
        return run(argv[2], argv[3], argv[4], argv[5], keep);
    }
    if (argc >= 2 && !strcmp(argv[1], "kill"))
        return kill_tasks();
    if (argc >= 2 && !strcmp(argv[1], "apply")) {
        if (chdir(WS)) {
            perror(WS);
            return 1;
        }
        apply_pending();
        return 0;
    }
    if (argc >= 3 && !strcmp(argv[1], "setup")) {
        /* memory cap of the task cgroup: the guest's MemTotal minus what the agent keeps */
        size_t n = 0;
        char *mi = slurp("/proc/meminfo", &n);
        long long kb = 0;
        if (mi) {
            char *p = strstr(mi, "MemTotal:");
            if (p)
                kb = atoll(p + 9);
            free(mi);
        }
        long long mib = kb / 1024 - atoll(argv[2]);
        if (mib < 32)
            mib = 32;
        char v[64];
        int vl = snprintf(v, sizeof v, "%lld", mib * 1048576);
        int fd = open(CG "/memory.max", O_WRONLY);
        if (fd < 0 || write(fd, v, (size_t)vl) < 0)
            perror("hearth-exec: memory.max");
        if (fd >= 0)
            close(fd);
        if (chdir(WS)) {
            perror(WS);
            return 1;
        }
        apply_pending();
        restamp();
        return 0;
    }
    fprintf(stderr, "usage: hearth-exec init | run CWD COMMAND SUFFIX TOKEN [keep] [HOST_TIME_NS] | "
                    "setup RESERVE_MIB | apply | kill\n");
    return 2;
}
