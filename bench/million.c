/*
 * million.c - hold up to a million idle WebSocket client connections to one
 * server, answer its pings, and time one broadcast's arrival at all of them.
 *
 * The load generator of bench/million.py.  Single thread, epoll, non-blocking
 * sockets, libc only.  Build: gcc -O2 -o million bench/million.c
 *
 * Each connection is bound to a source address 127.0.0.2, 127.0.0.3, ...
 * and an explicit source port (--per-ip connections per address, ports
 * --port-base onwards; a port already in use is skipped) because one source
 * address gives at most one connection per local port to the server's
 * address:port, and letting connect() pick the port gets slow as the
 * ephemeral range fills.  The state of a connection is
 * 28 bytes in an array indexed by its descriptor; the kernel's socket is the
 * real cost.
 *
 *   million --port P -n N [--host 127.0.0.1] [--per-ip 40000]
 *           [--port-base 20000] [--first-ip 2] [--concurrency 500]
 *           [--min-avail-mib 3072] [--path /]
 *
 * Opens connections (at most --concurrency in TCP connect or opening
 * handshake at once) until N are open, or opening fails for good (EMFILE,
 * EADDRNOTAVAIL, ...), or more than 1000 + N/10 connects or handshakes have
 * failed, or MemAvailable falls under --min-avail-mib, or "stop" arrives on
 * stdin.  Every connection answers each ping with a pong
 * (same payload, masked); data frames are counted.
 *
 * Commands on stdin (one per line):
 *   stop        stop opening connections
 *   broadcast   the first open connection sends one 32-byte text message;
 *               the tool reports when 50%, 90%, 99% and 100% of the open
 *               connections have received a data frame (a broadcast server
 *               sends it to every client, the sender included)
 *   quit        exit (the kernel closes the sockets)
 *
 * Output on stdout, one JSON object per line:
 *   {"event":"progress",...}  once a second: open, pending, failures,
 *                              pings answered, closed by the server, ...
 *   {"event":"opened",...}     when opening ends: why, how many, how long
 *   {"event":"broadcast",...}  the broadcast's arrival times (ms)
 * Exit status 0; usage errors 2.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

enum { S_FREE, S_CONNECTING, S_HS, S_OPEN };

typedef struct {
    uint8_t st;
    uint8_t hpos;  /* S_HS: bytes of the status line seen (up to 12); S_OPEN: header bytes */
    uint8_t crlf;  /* S_HS: progress through "\r\n\r\n" */
    uint8_t op;    /* opcode of the frame being read */
    uint8_t clen;  /* control payload bytes collected */
    uint8_t plen;  /* control payload length */
    uint8_t hdr[10];
    uint32_t left; /* payload bytes still to skip (data frames) */
    uint8_t ctl[8];
} conn_t;

static conn_t *conns;
static int maxfd;
static int epfd;
static struct sockaddr_in srv;
static char req[512];
static int req_len;

static long long target = 1000;
static int per_ip = 40000;
static int port_base = 20000; /* source ports port_base .. port_base + per_ip - 1 */
static int first_ip = 2;      /* source addresses 127.0.0.<first_ip> onwards */
static long long slot, bind_in_use;
static int concurrency = 500;
static long long min_avail_kib = 3072LL * 1024;

static long long n_open, n_pending, n_started;
static long long f_connect, f_hs, f_closed_open, f_send;
static long long pings, data_frames, closes;
static int opening = 1;
static const char *stop_reason = "";
static int stop_errno;
static uint64_t t0, t_opened;

/* broadcast */
static int bc_active;
static long long bc_expect, bc_got;
static uint64_t bc_t0, bc_t50, bc_t90, bc_t99, bc_t100, bc_first;

static uint8_t rbuf[65536];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t rng = 0x12345678u;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static long long mem_available_kib(void)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return -1;
    char line[256];
    long long v = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lld kB", &v) == 1)
            break;
    fclose(f);
    return v;
}

static void drop(int fd)
{
    conn_t *c = &conns[fd];
    if (c->st == S_OPEN)
        n_open--;
    else if (c->st == S_CONNECTING || c->st == S_HS)
        n_pending--;
    c->st = S_FREE;
    close(fd); /* also removes it from epoll */
}

static void stop_opening(const char *why, int err)
{
    if (!opening)
        return;
    opening = 0;
    stop_reason = why;
    stop_errno = err;
}

static void start_one(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        stop_opening("socket", errno);
        return;
    }
    if (fd >= maxfd) {
        close(fd);
        stop_opening("descriptor table", EMFILE);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one); /* ports in TIME_WAIT from a previous run */
    /* An explicit source address AND port: bind() is then O(1). Leaving the port to
     * connect() (IP_BIND_ADDRESS_NO_PORT, or no bind at all) makes the kernel search the
     * ephemeral range for a free 4-tuple, which costs more the fuller the range gets: it made
     * this tool spend ~670 us of CPU per connection at 25,000 per address. */
    for (int tries = 0;; tries++) {
        long long k = slot++;
        long long ipn = first_ip + k / per_ip; /* 127.0.0.2 onwards */
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl((127u << 24) | (uint32_t)ipn);
        src.sin_port = htons((uint16_t)(port_base + k % per_ip));
        if (ipn > 254) {
            close(fd);
            stop_opening("source addresses used up", EADDRNOTAVAIL);
            return;
        }
        if (bind(fd, (struct sockaddr *)&src, sizeof src) == 0)
            break;
        if (errno != EADDRINUSE || tries >= 10000) {
            int e = errno;
            close(fd);
            stop_opening("bind", e);
            return;
        }
        bind_in_use++; /* a port some other program holds on this address: skip it */
    }
    conn_t *c = &conns[fd];
    memset(c, 0, sizeof *c);
    c->st = S_CONNECTING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.fd = fd};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        int e = errno;
        close(fd);
        c->st = S_FREE;
        stop_opening("epoll_ctl", e);
        return;
    }
    n_pending++;
    n_started++;
    if (connect(fd, (struct sockaddr *)&srv, sizeof srv) < 0 && errno != EINPROGRESS) {
        int e = errno;
        drop(fd);
        f_connect++;
        if (e == EADDRNOTAVAIL || e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM)
            stop_opening("connect", e);
    }
}

static void send_frame(int fd, int opcode, const uint8_t *payload, size_t len)
{
    uint8_t f[2 + 4 + 125];
    uint32_t m = rnd();
    f[0] = (uint8_t)(0x80 | opcode);
    f[1] = (uint8_t)(0x80 | len);
    memcpy(f + 2, &m, 4);
    for (size_t i = 0; i < len; i++)
        f[6 + i] = payload[i] ^ f[2 + (i & 3)];
    ssize_t n = send(fd, f, 6 + len, MSG_NOSIGNAL);
    if (n != (ssize_t)(6 + len))
        f_send++; /* a 6..131-byte send to an idle socket does not block in practice */
}

static void got_data_frame(void)
{
    data_frames++;
    if (!bc_active)
        return;
    uint64_t t = now_ns();
    bc_got++;
    if (bc_got == 1)
        bc_first = t;
    if (!bc_t50 && bc_got * 2 >= bc_expect)
        bc_t50 = t;
    if (!bc_t90 && bc_got * 10 >= bc_expect * 9)
        bc_t90 = t;
    if (!bc_t99 && bc_got * 100 >= bc_expect * 99)
        bc_t99 = t;
    if (!bc_t100 && bc_got >= bc_expect)
        bc_t100 = t;
}

/* Parse server frames (unmasked) in buf. Returns 0, or -1 if the connection was dropped. */
static int frames(int fd, const uint8_t *p, size_t n)
{
    conn_t *c = &conns[fd];
    while (n) {
        if (c->left) { /* skipping a data payload */
            size_t k = n < c->left ? n : c->left;
            c->left -= (uint32_t)k;
            p += k;
            n -= k;
            continue;
        }
        if (c->plen && c->clen < c->plen) { /* collecting a control payload */
            size_t k = c->plen - c->clen;
            if (k > n)
                k = n;
            memcpy(c->ctl + c->clen, p, k);
            c->clen += (uint8_t)k;
            p += k;
            n -= k;
            if (c->clen < c->plen)
                return 0;
            goto control_done;
        }
        /* header */
        c->hdr[c->hpos++] = *p++;
        n--;
        if (c->hpos < 2)
            continue;
        {
            int l7 = c->hdr[1] & 0x7f;
            int need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0);
            if (c->hpos < need)
                continue;
            uint64_t len = (uint64_t)l7;
            if (l7 == 126)
                len = ((uint64_t)c->hdr[2] << 8) | c->hdr[3];
            else if (l7 == 127) {
                len = 0;
                for (int i = 0; i < 8; i++)
                    len = (len << 8) | c->hdr[2 + i];
            }
            c->op = c->hdr[0] & 0x0f;
            c->hpos = 0;
            if (c->op >= 8) {
                if (len > sizeof c->ctl) {
                    /* longer control payloads than tether's 4-byte pings: not needed here */
                    f_closed_open++;
                    drop(fd);
                    return -1;
                }
                c->plen = (uint8_t)len;
                c->clen = 0;
                if (len == 0)
                    goto control_done;
                continue;
            }
            if (c->op != 0) /* count each message once, at its first frame */
                got_data_frame();
            c->left = (uint32_t)len;
            continue;
        }
    control_done:
        if (c->op == 0x9) {
            pings++;
            send_frame(fd, 0xA, c->ctl, c->plen);
        } else if (c->op == 0x8) {
            closes++;
            f_closed_open++;
            drop(fd);
            return -1;
        }
        c->plen = c->clen = 0;
    }
    return 0;
}

static void on_event(int fd, uint32_t evs)
{
    conn_t *c = &conns[fd];
    if (c->st == S_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err || (evs & (EPOLLERR | EPOLLHUP))) {
            f_connect++;
            drop(fd);
            return;
        }
        if (!(evs & EPOLLOUT))
            return;
        c->st = S_HS;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
        if (send(fd, req, (size_t)req_len, MSG_NOSIGNAL) != req_len) {
            f_hs++;
            drop(fd);
        }
        return;
    }
    for (int rounds = 0; rounds < 16; rounds++) {
        ssize_t n = recv(fd, rbuf, sizeof rbuf, 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            if (c->st == S_HS)
                f_hs++;
            else
                f_closed_open++;
            drop(fd);
            return;
        }
        const uint8_t *p = rbuf;
        size_t left = (size_t)n;
        if (c->st == S_HS) {
            static const char want[] = "HTTP/1.1 101";
            while (left) {
                uint8_t ch = *p++;
                left--;
                if (c->hpos < 12) {
                    if (ch != (uint8_t)want[c->hpos]) {
                        f_hs++;
                        drop(fd);
                        return;
                    }
                    c->hpos++;
                }
                if (ch == "\r\n\r\n"[c->crlf])
                    c->crlf++;
                else
                    c->crlf = ch == '\r' ? 1 : 0;
                if (c->crlf == 4) {
                    c->st = S_OPEN;
                    c->hpos = c->crlf = 0;
                    n_pending--;
                    n_open++;
                    break;
                }
            }
            if (c->st != S_OPEN)
                continue;
        }
        if (left && frames(fd, p, left) < 0)
            return;
    }
}

static void report(const char *event)
{
    uint64_t t = now_ns();
    printf("{\"event\":\"%s\",\"t\":%.3f,\"open\":%lld,\"pending\":%lld,\"started\":%lld,"
           "\"failed_connect\":%lld,\"failed_handshake\":%lld,\"closed_after_open\":%lld,"
           "\"close_frames\":%lld,\"failed_send\":%lld,\"pings\":%lld,\"data_frames\":%lld,"
           "\"bind_in_use_skipped\":%lld,\"mem_available_kib\":%lld,\"opening\":%s",
           event, (double)(t - t0) / 1e9, n_open, n_pending, n_started, f_connect, f_hs,
           f_closed_open, closes, f_send, pings, data_frames, bind_in_use, mem_available_kib(),
           opening ? "true" : "false");
    if (!strcmp(event, "opened"))
        printf(",\"reason\":\"%s\",\"errno\":\"%s\",\"open_s\":%.3f", stop_reason,
               stop_errno ? strerror(stop_errno) : "", (double)(t_opened - t0) / 1e9);
    printf("}\n");
    fflush(stdout);
}

static void report_broadcast(int complete)
{
    double ms0 = (double)bc_t0 / 1e6;
#define MS(x) ((x) ? (double)(x) / 1e6 - ms0 : -1.0)
    printf("{\"event\":\"broadcast\",\"complete\":%s,\"expected\":%lld,\"received\":%lld,"
           "\"first_ms\":%.3f,\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,\"all_ms\":%.3f}\n",
           complete ? "true" : "false", bc_expect, bc_got, MS(bc_first), MS(bc_t50), MS(bc_t90),
           MS(bc_t99), MS(bc_t100));
#undef MS
    fflush(stdout);
}

static int command(void)
{
    static char line[256];
    static size_t len;
    ssize_t n = read(0, line + len, sizeof line - 1 - len);
    if (n <= 0)
        return 1; /* EOF: quit */
    len += (size_t)n;
    line[len] = 0;
    char *nl;
    while ((nl = strchr(line, '\n'))) {
        *nl = 0;
        if (!strcmp(line, "stop")) {
            stop_opening("stop command", 0);
        } else if (!strcmp(line, "broadcast")) {
            int sender = -1;
            for (int fd = 0; fd < maxfd; fd++)
                if (conns[fd].st == S_OPEN) {
                    sender = fd;
                    break;
                }
            if (sender >= 0) {
                bc_active = 1;
                bc_expect = n_open;
                bc_got = 0;
                bc_first = bc_t50 = bc_t90 = bc_t99 = bc_t100 = 0;
                bc_t0 = now_ns();
                static const uint8_t msg[32] = "million: one message to all....";
                send_frame(sender, 0x1, msg, sizeof msg);
            }
        } else if (!strcmp(line, "quit")) {
            return 1;
        }
        size_t used = (size_t)(nl + 1 - line);
        memmove(line, nl + 1, len - used + 1);
        len -= used;
    }
    if (len >= sizeof line - 1)
        len = 0;
    return 0;
}

int main(int argc, char **argv)
{
    const char *host = "127.0.0.1", *path = "/";
    int port = 0;
    static const struct option opts[] = {
        {"host", required_argument, 0, 'H'},        {"port", required_argument, 0, 'p'},
        {"conns", required_argument, 0, 'n'},       {"per-ip", required_argument, 0, 'i'},
        {"concurrency", required_argument, 0, 'C'}, {"min-avail-mib", required_argument, 0, 'M'},
        {"path", required_argument, 0, 'P'},        {"port-base", required_argument, 0, 'B'},
        {"first-ip", required_argument, 0, 'I'},
        {0, 0, 0, 0},
    };
    int o;
    while ((o = getopt_long(argc, argv, "n:p:", opts, NULL)) != -1) {
        switch (o) {
        case 'H': host = optarg; break;
        case 'p': port = atoi(optarg); break;
        case 'n': target = atoll(optarg); break;
        case 'i': per_ip = atoi(optarg); break;
        case 'C': concurrency = atoi(optarg); break;
        case 'M': min_avail_kib = atoll(optarg) * 1024; break;
        case 'P': path = optarg; break;
        case 'B': port_base = atoi(optarg); break;
        case 'I': first_ip = atoi(optarg); break;
        default:
            fprintf(stderr, "usage: million --port P -n N [--host H] [--per-ip K] "
                            "[--concurrency C] [--min-avail-mib M] [--port-base B] [--first-ip 2] "
                            "[--path /]\n");
            return 2;
        }
    }
    if (port <= 0 || target < 1 || per_ip < 1 || concurrency < 1 || port_base < 1024 ||
        port_base + per_ip > 65536) {
        fprintf(stderr, "million: bad arguments (see the comment at the top of million.c)\n");
        return 2;
    }
    if (first_ip < 1 || first_ip + (target - 1) / per_ip > 254) {
        fprintf(stderr, "million: -n / --per-ip needs more than 253 source addresses\n");
        return 2;
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    getrlimit(RLIMIT_NOFILE, &rl);
    maxfd = (int)rl.rlim_cur;
    conns = calloc((size_t)maxfd, sizeof *conns);
    if (!conns) {
        fprintf(stderr, "million: out of memory\n");
        return 1;
    }
    srv.sin_family = AF_INET;
    srv.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &srv.sin_addr) != 1) {
        fprintf(stderr, "million: --host must be an IPv4 address\n");
        return 2;
    }
    req_len = snprintf(req, sizeof req,
                       "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                       "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                       "Sec-WebSocket-Version: 13\r\n\r\n",
                       path, host, port);
    signal(SIGPIPE, SIG_IGN);
    rng ^= (uint32_t)getpid();
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event sev = {.events = EPOLLIN, .data.fd = -1};
    epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev);

    t0 = now_ns();
    uint64_t last = t0;
    static struct epoll_event evs[1024];
    int opened_reported = 0;
    for (;;) {
        while (opening && n_pending < concurrency && n_open + n_pending < target)
            start_one();
        if (opening && n_open >= target)
            stop_opening("target reached", 0);
        if (opening && f_connect + f_hs > 1000 + target / 10)
            stop_opening("too many failed connects/handshakes (server at its descriptor limit?)", 0);
        if (!opening && !opened_reported && n_pending == 0) {
            t_opened = now_ns();
            report("opened");
            opened_reported = 1;
        }
        int n = epoll_wait(epfd, evs, 1024, 100);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.fd < 0) {
                if (command()) {
                    if (bc_active)
                        report_broadcast(bc_t100 != 0);
                    report("exit");
                    return 0;
                }
                continue;
            }
            on_event(evs[i].data.fd, evs[i].events);
        }
        uint64_t t = now_ns();
        if (bc_active && bc_t100) {
            report_broadcast(1);
            bc_active = 0;
        }
        if (t - last >= 1000000000ull) {
            last = t;
            if (opening) {
                long long avail = mem_available_kib();
                if (avail >= 0 && avail < min_avail_kib)
                    stop_opening("MemAvailable under --min-avail-mib", 0);
            }
            report("progress");
        }
    }
}
