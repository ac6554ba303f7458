/*
 * rooms_client.c - the load client of bench/rooms.py: R rooms of M members each, one
 * publisher per room, counting every delivery. Speaks tether's hub protocol or Socket.IO 4
 * (Engine.IO 4 over a WebSocket), over its own RFC 6455 client. C, epoll, one thread.
 *
 *   gcc -O2 -o bench/.build/rooms_client bench/rooms_client.c      (rooms.py does it)
 *   rooms_client --kind tether|socketio --port P [--host 127.0.0.1] [--path /ws]
 *                [--origin http://127.0.0.1:P] [--rooms 1] [--members 1000] [--size 64]
 *                [--window 32] [--concurrency 100] [--warmup 2] [--duration 10]
 *                [--join-timeout 120] [--server-pids PID,PID...]
 *
 * Members: connection i of room r ("room<r>") is named m<r>_<i>. tether: a WebSocket to
 * PATH?name=m<r>_<i> with Origin ORIGIN, then {"type":"subscribe","topic":"room<r>"}; joined
 * = its `subscribed` frame. socketio: a WebSocket to /socket.io/?EIO=4&transport=websocket,
 * "40" once the server's "0{...}" came, then '420["join","room<r>"]'; joined = "430[...]";
 * Engine.IO pings ("2") are answered "3". WebSocket pings are answered with pongs.
 *
 * Publisher: member 0 of each room (so it also receives its own message, like every member).
 * tether: {"type":"publish","topic":"room<r>","data":"xxx..."} (SIZE x's); the hub answers
 * it an `ack` too (counted apart). socketio: '42["publish","room<r>","xxx..."]', which the
 * servers forward to the room, the sender included: '42["message","xxx..."]'. Window: the
 * publisher of room r keeps sent - floor(deliveries in r / M) < WINDOW, i.e. at most WINDOW
 * messages not yet received by the average member; it tops up after every batch of reads,
 * all the publishes of a top-up in one write().
 *
 * Deliveries: text messages whose first bytes are {"type":"message" (tether) or 42[
 * (socketio), counted while the frames stream by (only the first 24 payload bytes are looked
 * at); their bytes on the wire (frame header + payload) too.
 *
 * Protocol with the driver: once every member has joined it prints "joined" on
 * stderr and waits for a line "go" on stdin (answering pings meanwhile). Then it publishes;
 * after WARMUP s it takes mark 0 (its counters, its own CPU from getrusage, the utime+stime
 * of --server-pids from /proc, /proc/stat's busy time) and prints "mark0"; after DURATION s
 * more, mark 1, and prints one line of JSON (the differences) on stdout, and exits 0 without
 * a closing handshake (the driver stops the server). Errors (a refused connection, a
 * closed member, an error frame, the join timeout): "rooms_client: error: ..." on stderr,
 * exit 1. A watchdog (alarm) bounds the whole run.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define KEY "dGhlIHNhbXBsZSBub25jZQ=="        /* RFC 6455 1.3's example key */
#define ACCEPT "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" /* ... and its Sec-WebSocket-Accept */
#define HEAD 24
#define STDIN_ID UINT64_MAX

enum { K_TETHER, K_SOCKETIO };
enum { S_CONNECTING, S_HANDSHAKE, S_OPEN, S_JOINING, S_JOINED };

typedef struct {
    int fd, room, idx, state;
    char *hs; /* handshake response so far */
    size_t hslen;
    uint8_t fh[14]; /* frame header so far */
    int fhlen, inframe, opcode, fin, msgop;
    uint64_t need, paylen, wire; /* payload left in the frame; the message's payload, wire bytes */
    uint8_t head[HEAD]; /* first bytes of the current message */
    int headlen;
    uint8_t ctrl[128]; /* control frame payload */
    int ctrllen;
    char *out; /* unsent bytes */
    size_t outlen, outoff, outcap;
    int epout;
} conn_t;

static struct {
    int kind, port, rooms, members, size, window, concurrency;
    const char *host, *path, *origin;
    double warmup, duration, join_timeout;
    int npids;
    int pids[64];
} cfg = {K_TETHER, 0, 1, 1000, 64, 32, 100, "127.0.0.1", NULL, NULL, 2, 10, 120, 0, {0}};

static conn_t *conns;
static int nconns, epfd;
static struct sockaddr_in addr;
static uint64_t *room_deliv, *room_sent;
static uint64_t deliveries, deliv_bytes, acks, other_frames, reads, publishes;
static uint8_t **pub_payload;
static size_t *pub_len;
static uint32_t rng = 2463534242u;

static void die(const char *fmt, ...)
{
    va_list ap;
    fputs("rooms_client: error: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void watch(conn_t *c, int out)
{
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u64 = (uint64_t)(c - conns)};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->epout = out;
}

static void flush_out(conn_t *c)
{
    while (c->outoff < c->outlen) {
        ssize_t n = write(c->fd, c->out + c->outoff, c->outlen - c->outoff);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                break;
            die("m%d_%d: write: %s", c->room, c->idx, strerror(errno));
        }
        c->outoff += (size_t)n;
    }
    if (c->outoff == c->outlen)
        c->outoff = c->outlen = 0;
    if ((c->outlen != 0) != c->epout)
        watch(c, c->outlen != 0);
}

static void put(conn_t *c, const void *p, size_t n)
{
    if (c->outlen + n > c->outcap) {
        c->outcap = (c->outlen + n) * 2 + 256;
        if (!(c->out = realloc(c->out, c->outcap)))
            die("out of memory");
    }
    memcpy(c->out + c->outlen, p, n);
    c->outlen += n;
}

/* one masked client frame (payload < 65536) appended to c's output */
static void frame(conn_t *c, int opcode, const uint8_t *p, size_t n)
{
    uint8_t h[8];
    size_t hl = 2;
    h[0] = (uint8_t)(0x80 | opcode);
    if (n < 126) {
        h[1] = (uint8_t)(0x80 | n);
    } else {
        h[1] = 0x80 | 126;
        h[2] = (uint8_t)(n >> 8);
        h[3] = (uint8_t)n;
        hl = 4;
    }
    rng ^= rng << 13, rng ^= rng >> 17, rng ^= rng << 5;
    memcpy(h + hl, &rng, 4);
    put(c, h, hl + 4);
    if (c->outlen + n > c->outcap) {
        c->outcap = (c->outlen + n) * 2 + 256;
        if (!(c->out = realloc(c->out, c->outcap)))
            die("out of memory");
    }
    for (size_t k = 0; k < n; k++)
        c->out[c->outlen + k] = (char)(p[k] ^ h[hl + (k & 3)]);
    c->outlen += n;
}

static void text(conn_t *c, const char *s)
{
    frame(c, 1, (const uint8_t *)s, strlen(s));
}

static int starts(const conn_t *c, const char *s)
{
    size_t n = strlen(s);
    return (size_t)c->headlen >= n ? !memcmp(c->head, s, n) : 0;
}

static int joined_count;

static void joined(conn_t *c)
{
    if (c->state != S_JOINED) {
        c->state = S_JOINED;
        joined_count++;
    }
}

/* a whole message: c->msgop, c->paylen, c->wire, its first bytes in c->head */
static void message(conn_t *c)
{
    if (c->msgop != 1) {
        other_frames++;
        return;
    }
    if (cfg.kind == K_TETHER) {
        if (starts(c, "{\"type\":\"message\"")) {
            deliveries++, deliv_bytes += c->wire, room_deliv[c->room]++;
        } else if (starts(c, "{\"type\":\"ack\"")) {
            acks++;
        } else if (starts(c, "{\"type\":\"subscribed\"")) {
            other_frames++;
            joined(c);
        } else if (starts(c, "{\"type\":\"error\"")) {
            die("m%d_%d: error frame: %.*s", c->room, c->idx, c->headlen, c->head);
        } else {
            other_frames++;
        }
        return;
    }
    if (starts(c, "42[")) {
        deliveries++, deliv_bytes += c->wire, room_deliv[c->room]++;
        return;
    }
    other_frames++;
    char buf[64];
    if (c->paylen == 1 && c->head[0] == '2') {
        text(c, "3"); /* Engine.IO ping -> pong */
    } else if (starts(c, "0{") && c->state == S_OPEN) {
        text(c, "40");
    } else if (starts(c, "40") && c->state == S_OPEN) {
        snprintf(buf, sizeof buf, "420[\"join\",\"room%d\"]", c->room);
        text(c, buf);
        c->state = S_JOINING;
    } else if (starts(c, "430")) {
        joined(c);
    } else if (starts(c, "44") || starts(c, "41") || (c->paylen == 1 && c->head[0] == '1')) {
        die("m%d_%d: socket.io: %.*s", c->room, c->idx, c->headlen, c->head);
    }
}

static void frames(conn_t *c, const uint8_t *b, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (!c->inframe) {
            while (i < n && c->fhlen < 2)
                c->fh[c->fhlen++] = b[i++];
            if (c->fhlen < 2)
                return;
            int l7 = c->fh[1] & 0x7f, hl = l7 == 126 ? 4 : l7 == 127 ? 10 : 2;
            while (i < n && c->fhlen < hl)
                c->fh[c->fhlen++] = b[i++];
            if (c->fhlen < hl)
                return;
            if (c->fh[1] & 0x80)
                die("masked frame from the server");
            if (c->fh[0] & 0x70)
                die("frame with RSV bits from the server");
            c->fin = c->fh[0] >> 7;
            c->opcode = c->fh[0] & 15;
            c->need = (uint64_t)l7;
            if (l7 == 126)
                c->need = (uint64_t)c->fh[2] << 8 | c->fh[3];
            else if (l7 == 127)
                for (int k = 2; k < 10; k++)
                    c->need = c->need << 8 | c->fh[k];
            c->fhlen = 0;
            c->inframe = 1;
            c->ctrllen = 0;
            if (c->opcode >= 8 && c->need > 125)
                die("control frame too long");
            if (c->opcode >= 1 && c->opcode <= 2) {
                c->msgop = c->opcode;
                c->paylen = c->wire = 0;
                c->headlen = 0;
            }
            if (c->opcode < 8)
                c->wire += (uint64_t)hl + c->need; /* the message's frame headers + payload */
        }
        size_t take = c->need < n - i ? (size_t)c->need : n - i;
        if (c->opcode >= 8) {
            memcpy(c->ctrl + c->ctrllen, b + i, take);
            c->ctrllen += (int)take;
        } else {
            if (c->headlen < HEAD) {
                size_t k = take < (size_t)(HEAD - c->headlen) ? take : (size_t)(HEAD - c->headlen);
                memcpy(c->head + c->headlen, b + i, k);
                c->headlen += (int)k;
            }
            c->paylen += take;
        }
        i += take;
        c->need -= take;
        if (c->need)
            return;
        c->inframe = 0;
        if (c->opcode == 9) {
            frame(c, 10, c->ctrl, (size_t)c->ctrllen);
        } else if (c->opcode == 8) {
            die("m%d_%d: closed by the server (code %d)", c->room, c->idx,
                c->ctrllen >= 2 ? c->ctrl[0] << 8 | c->ctrl[1] : 1005);
        } else if (c->opcode < 8 && c->fin) {
            message(c);
        }
    }
}

static void handshake(conn_t *c, const char *b, size_t n)
{
    if (!(c->hs = realloc(c->hs, c->hslen + n + 1)))
        die("out of memory");
    memcpy(c->hs + c->hslen, b, n);
    c->hslen += n;
    c->hs[c->hslen] = 0;
    char *end = strstr(c->hs, "\r\n\r\n");
    if (!end) {
        if (c->hslen > 16384)
            die("handshake response too long");
        return;
    }
    if (strncmp(c->hs, "HTTP/1.1 101", 12))
        die("m%d_%d: handshake: %.60s", c->room, c->idx, c->hs);
    if (!strcasestr(c->hs, "\r\nsec-websocket-accept: " ACCEPT "\r\n"))
        die("handshake: wrong Sec-WebSocket-Accept");
    if (strcasestr(c->hs, "\r\nsec-websocket-extensions:"))
        die("handshake: the server selected an extension");
    size_t used = (size_t)(end + 4 - c->hs), rest = c->hslen - used;
    char *hs = c->hs;
    c->hs = NULL;
    c->hslen = 0;
    c->state = S_OPEN;
    if (cfg.kind == K_TETHER) {
        char buf[96];
        snprintf(buf, sizeof buf, "{\"type\":\"subscribe\",\"topic\":\"room%d\"}", c->room);
        text(c, buf);
        c->state = S_JOINING;
    }
    if (rest)
        frames(c, (const uint8_t *)hs + used, rest);
    free(hs);
}

static uint8_t rbuf[256 * 1024];

static void readable(conn_t *c)
{
    ssize_t n = read(c->fd, rbuf, sizeof rbuf);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return;
        die("m%d_%d: read: %s", c->room, c->idx, strerror(errno));
    }
    if (n == 0)
        die("m%d_%d: the server closed the connection", c->room, c->idx);
    reads++;
    if (c->state == S_HANDSHAKE)
        handshake(c, (const char *)rbuf, (size_t)n);
    else
        frames(c, rbuf, (size_t)n);
}

static void start_connect(conn_t *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0)
        die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS)
        die("connect: %s", strerror(errno));
    c->state = S_CONNECTING;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u64 = (uint64_t)(c - conns)};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0)
        die("epoll_ctl: %s", strerror(errno));
    c->epout = 1;
}

static void connected(conn_t *c)
{
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err)
        die("m%d_%d: connect: %s", c->room, c->idx, strerror(err));
    char req[512];
    if (cfg.kind == K_TETHER)
        snprintf(req, sizeof req,
                 "GET %s?name=m%d_%d HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n"
                 "Origin: %s\r\n\r\n",
                 cfg.path, c->room, c->idx, cfg.host, cfg.port, cfg.origin);
    else
        snprintf(req, sizeof req,
                 "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: " KEY "\r\nSec-WebSocket-Version: 13\r\n\r\n",
                 cfg.path, cfg.host, cfg.port);
    c->state = S_HANDSHAKE;
    put(c, req, strlen(req));
}

static void top_up(void)
{
    for (int r = 0; r < cfg.rooms; r++) {
        conn_t *c = &conns[(size_t)r * (size_t)cfg.members];
        uint64_t done = room_deliv[r] / (uint64_t)cfg.members;
        int k = 0;
        while (room_sent[r] - done < (uint64_t)cfg.window && k < cfg.window) {
            frame(c, 1, pub_payload[r], pub_len[r]);
            room_sent[r]++, publishes++, k++;
        }
        if (k)
            flush_out(c);
    }
}

typedef struct {
    double t, cpu_self, cpu_server, busy;
    uint64_t deliveries, bytes, acks, other, reads, publishes;
} mark_t;

static double proc_cpu(int pid)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    unsigned long ut = 0, st = 0;
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static double machine_busy(void)
{
    unsigned long long v[10] = {0};
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return -1;
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
                   &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n != 8)
        return -1;
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
}

static mark_t take_mark(void)
{
    mark_t m = {.t = now(), .deliveries = deliveries, .bytes = deliv_bytes, .acks = acks,
                .other = other_frames, .reads = reads, .publishes = publishes};
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    m.cpu_self = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    for (int i = 0; i < cfg.npids; i++)
        m.cpu_server += proc_cpu(cfg.pids[i]);
    m.busy = machine_busy();
    return m;
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "rooms_client: error: watchdog expired\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    _exit(1);
}

static void usage(void)
{
    fputs("usage: rooms_client --kind tether|socketio --port P [--host H] [--path P] [--origin O]\n"
          "  [--rooms R] [--members M] [--size S] [--window W] [--concurrency C] [--warmup S]\n"
          "  [--duration S] [--join-timeout S] [--server-pids PID,...]\n", stderr);
    exit(2);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc)
            usage();
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--kind")) {
            if (!strcmp(v, "tether"))
                cfg.kind = K_TETHER;
            else if (!strcmp(v, "socketio"))
                cfg.kind = K_SOCKETIO;
            else
                usage();
        } else if (!strcmp(k, "--port")) cfg.port = atoi(v);
        else if (!strcmp(k, "--host")) cfg.host = v;
        else if (!strcmp(k, "--path")) cfg.path = v;
        else if (!strcmp(k, "--origin")) cfg.origin = v;
        else if (!strcmp(k, "--rooms")) cfg.rooms = atoi(v);
        else if (!strcmp(k, "--members")) cfg.members = atoi(v);
        else if (!strcmp(k, "--size")) cfg.size = atoi(v);
        else if (!strcmp(k, "--window")) cfg.window = atoi(v);
        else if (!strcmp(k, "--concurrency")) cfg.concurrency = atoi(v);
        else if (!strcmp(k, "--warmup")) cfg.warmup = atof(v);
        else if (!strcmp(k, "--duration")) cfg.duration = atof(v);
        else if (!strcmp(k, "--join-timeout")) cfg.join_timeout = atof(v);
        else if (!strcmp(k, "--server-pids")) {
            for (char *s = (char *)v; *s && cfg.npids < 64;) {
                cfg.pids[cfg.npids++] = (int)strtol(s, &s, 10);
                if (*s == ',')
                    s++;
                else
                    break;
            }
        } else
            usage();
    }
    if (!cfg.port || cfg.rooms < 1 || cfg.members < 1 || cfg.size < 1 || cfg.size > 60000 ||
        cfg.window < 1 || cfg.concurrency < 1)
        usage();
    if (!cfg.path)
        cfg.path = cfg.kind == K_TETHER ? "/ws" : "/socket.io/?EIO=4&transport=websocket";
    static char origin[128];
    if (!cfg.origin) {
        snprintf(origin, sizeof origin, "http://%s:%d", cfg.host, cfg.port);
        cfg.origin = origin;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)(cfg.join_timeout + cfg.warmup + cfg.duration + 600));
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)cfg.port);
    if (inet_pton(AF_INET, cfg.host, &addr.sin_addr) != 1)
        die("bad --host %s (an IPv4 address)", cfg.host);

    nconns = cfg.rooms * cfg.members;
    conns = calloc((size_t)nconns, sizeof *conns);
    room_deliv = calloc((size_t)cfg.rooms, sizeof *room_deliv);
    room_sent = calloc((size_t)cfg.rooms, sizeof *room_sent);
    pub_payload = calloc((size_t)cfg.rooms, sizeof *pub_payload);
    pub_len = calloc((size_t)cfg.rooms, sizeof *pub_len);
    if (!conns || !room_deliv || !room_sent || !pub_payload || !pub_len)
        die("out of memory");
    char *body = malloc((size_t)cfg.size + 1);
    memset(body, 'x', (size_t)cfg.size);
    body[cfg.size] = 0;
    for (int r = 0; r < cfg.rooms; r++) {
        size_t cap = (size_t)cfg.size + 128;
        char *p = malloc(cap);
        int n = cfg.kind == K_TETHER
                    ? snprintf(p, cap, "{\"type\":\"publish\",\"topic\":\"room%d\",\"data\":\"%s\"}", r, body)
                    : snprintf(p, cap, "42[\"publish\",\"room%d\",\"%s\"]", r, body);
        pub_payload[r] = (uint8_t *)p;
        pub_len[r] = (size_t)n;
    }
    for (int i = 0; i < nconns; i++) {
        conns[i].room = i / cfg.members;
        conns[i].idx = i % cfg.members;
        conns[i].fd = -1;
    }
    epfd = epoll_create1(0);
    if (epfd < 0)
        die("epoll_create1: %s", strerror(errno));

    /* joining: at most --concurrency connections between connect and joined */
    double t0 = now(), deadline = t0 + cfg.join_timeout;
    int started = 0;
    struct epoll_event evs[512];
    while (joined_count < nconns) {
        while (started < nconns && started - joined_count < cfg.concurrency)
            start_connect(&conns[started++]);
        if (now() > deadline)
            die("timeout: %d of %d members joined in %.0f s", joined_count, nconns, cfg.join_timeout);
        int n = epoll_wait(epfd, evs, 512, 100);
        for (int e = 0; e < n; e++) {
            conn_t *c = &conns[evs[e].data.u64];
            if (c->state == S_CONNECTING && (evs[e].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)))
                connected(c);
            if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                readable(c);
            if (c->outlen || c->epout)
                flush_out(c);
        }
    }
    double t_joined = now() - t0;
    fputs("joined\n", stderr);

    /* wait for "go" on stdin, answering pings */
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    struct epoll_event sev = {.events = EPOLLIN, .data.u64 = STDIN_ID};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &sev) < 0)
        die("epoll on stdin: %s", strerror(errno));
    char line[64];
    size_t linelen = 0;
    int go = 0;
    uint64_t setup_other = other_frames;
    while (!go) {
        int n = epoll_wait(epfd, evs, 512, 1000);
        for (int e = 0; e < n; e++) {
            if (evs[e].data.u64 == STDIN_ID) {
                ssize_t k = read(0, line + linelen, sizeof line - 1 - linelen);
                if (k <= 0) {
                    if (k < 0 && errno == EAGAIN)
                        continue;
                    die("stdin closed before \"go\"");
                }
                linelen += (size_t)k;
                line[linelen] = 0;
                if (strstr(line, "go\n"))
                    go = 1;
                else if (linelen >= sizeof line - 1)
                    linelen = 0;
                continue;
            }
            conn_t *c = &conns[evs[e].data.u64];
            if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                readable(c);
            if (c->outlen || c->epout)
                flush_out(c);
        }
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);

    /* publish: warm-up, then the measured window */
    double t_go = now(), t_mark0 = t_go + cfg.warmup, t_end = t_mark0 + cfg.duration;
    mark_t m0 = {0};
    int marked = 0;
    top_up();
    for (;;) {
        double t = now();
        if (!marked && t >= t_mark0) {
            m0 = take_mark();
            marked = 1;
            fputs("mark0\n", stderr);
        }
        if (marked && t >= t_end)
            break;
        int n = epoll_wait(epfd, evs, 512, 10);
        for (int e = 0; e < n; e++) {
            conn_t *c = &conns[evs[e].data.u64];
            if (evs[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
                readable(c);
            if (c->outlen || c->epout)
                flush_out(c);
        }
        top_up();
    }
    mark_t m1 = take_mark();
    fputs("mark1\n", stderr);
    double wall = m1.t - m0.t;
    uint64_t d = m1.deliveries - m0.deliveries;
    printf("{\"kind\":\"%s\",\"rooms\":%d,\"members\":%d,\"size\":%d,\"window\":%d,"
           "\"join_s\":%.3f,\"setup_other_frames\":%llu,\"wall_s\":%.4f,\"deliveries\":%llu,"
           "\"delivery_bytes\":%llu,\"acks\":%llu,\"other_frames\":%llu,\"reads\":%llu,"
           "\"publishes\":%llu,\"client_cpu_s\":%.4f,\"server_cpu_s\":%.4f,\"machine_busy_s\":%.4f,"
           "\"server_pids\":%d,\"publish_payload_bytes\":%zu,\"in_flight_end\":%llu}\n",
           cfg.kind == K_TETHER ? "tether" : "socketio", cfg.rooms, cfg.members, cfg.size,
           cfg.window, t_joined, (unsigned long long)setup_other, wall, (unsigned long long)d,
           (unsigned long long)(m1.bytes - m0.bytes), (unsigned long long)(m1.acks - m0.acks),
           (unsigned long long)(m1.other - m0.other), (unsigned long long)(m1.reads - m0.reads),
           (unsigned long long)(m1.publishes - m0.publishes), m1.cpu_self - m0.cpu_self,
           m1.cpu_server - m0.cpu_server, m1.busy >= 0 && m0.busy >= 0 ? m1.busy - m0.busy : -1.0,
           cfg.npids, pub_len[0], (unsigned long long)(room_sent[0] - room_deliv[0] / (uint64_t)cfg.members));
    fflush(stdout);
    return 0;
}
