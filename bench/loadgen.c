/*
 * loadgen.c - AudioSocket load generator: N concurrent calls, one 20 ms clock.
 *
 * Plays Asterisk towards `audiosocket serve --app echo`: each call connects, sends its UUID
 * frame, then one audio frame every 20 ms on a shared absolute-deadline clock (timerfd,
 * TFD_TIMER_ABSTIME), each frame written whole in one write(). Each frame's payload carries
 * (seq:u32 LE, call index:u32 LE, magic:u32 LE) so every echoed frame can be matched to the
 * frame it echoes; silence frames from the server (all zeros) are told apart by the magic.
 *
 * One thread, epoll, non-blocking sockets. Every frame the server sends is timestamped on
 * arrival twice: when our read() returns it (user-space, includes our own delays) and the
 * kernel receive time of the socket (SO_TIMESTAMPNS), which does not depend on how late this
 * program got around to reading. A read that completes several frames of one call is
 * counted: somebody (the server or this program) was late. `--pump-every N` polls for the
 * server's frames after every N writes of a tick: without it, frames that arrive during this
 * program's own send phase (1000 writes take several ms) are read, and stamped on the read
 * clock, only after it, which added up to ~13 ms to the read clock's p99 at 1000 calls.
 *
 * Phases: ramp (connect `--ramp` calls per second), settle (`--settle` s), measure
 * (`--duration` s), drain (`--drain`, 1 s: send nothing more and wait for the echoes of the
 * measured frames; one still missing then counts as lost), then close every socket (that is how Asterisk hangs up).
 *
 * Output: progress lines ({"event": ...}) on stdout as phases change, then one JSON object
 * with the stats as the last line.
 *
 * Build: gcc -O2 -o bench/results/loadgen bench/loadgen.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>

#define MAGIC 0x41534c47u /* "GLSA" */
#define TICK_NS 20000000LL
#define RBUF 65536

/* histogram: 10 us bins up to 2 s, plus overflow */
#define HBIN_NS 10000LL
#define HBINS 200000
typedef struct {
    uint32_t *bins;
    uint64_t n, over;
    int64_t max_ns;
    double sum_ns;
} hist_t;

static void hist_init(hist_t *h) {
    h->bins = calloc(HBINS, sizeof(uint32_t));
    h->n = h->over = 0;
    h->max_ns = 0;
    h->sum_ns = 0;
}
static void hist_add(hist_t *h, int64_t ns) {
    if (ns < 0) ns = 0;
    int64_t b = ns / HBIN_NS;
    if (b >= HBINS) h->over++; else h->bins[b]++;
    h->n++;
    h->sum_ns += (double)ns;
    if (ns > h->max_ns) h->max_ns = ns;
}
static double hist_q_ms(const hist_t *h, double q) {
    if (h->n == 0) return 0.0;
    uint64_t target = (uint64_t)(q * (double)(h->n - 1)) + 1, acc = 0;
    for (int i = 0; i < HBINS; i++) {
        acc += h->bins[i];
        if (acc >= target) return (i + 0.5) * HBIN_NS / 1e6;
    }
    return h->max_ns / 1e6;
}
static void hist_json(FILE *f, const char *name, const hist_t *h) {
    fprintf(f, "\"%s\": {\"n\": %llu, \"mean_ms\": %.3f, \"p50_ms\": %.3f, \"p90_ms\": %.3f, "
               "\"p99_ms\": %.3f, \"p999_ms\": %.3f, \"max_ms\": %.3f}",
            name, (unsigned long long)h->n, h->n ? h->sum_ns / h->n / 1e6 : 0.0,
            hist_q_ms(h, 0.50), hist_q_ms(h, 0.90), hist_q_ms(h, 0.99), hist_q_ms(h, 0.999),
            h->max_ns / 1e6);
}

enum { ST_IDLE, ST_CONNECTING, ST_UP, ST_DEAD };

typedef struct {
    int fd;
    int state;
    uint32_t idx;
    uint32_t next_seq;      /* next seq to send (starts at 1) */
    int64_t first_tick;     /* global tick of seq 1 */
    uint8_t *echo_count;    /* per seq: how many times it came back */
    uint8_t *pend;          /* unsent tail of a short write */
    int pend_len;
    uint8_t rbuf[4096];
    int rlen;
    int64_t last_rx_user, last_rx_kern; /* ns, previous outbound frame of the server */
    uint64_t rx_frames_window;
    int got_hangup, got_eof;
} call_t;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* args */
static int g_port = 9092, g_calls = 100, g_rate = 8000;
static double g_ramp = 200.0, g_settle = 2.0, g_duration = 20.0, g_drain = 1.0;
/* --spin 1: poll with a zero timeout instead of sleeping in epoll_wait (see main). */
static int g_spin = 0;
static int g_pump_every = 0; /* --pump-every N: poll for reads after every N writes of a tick */
/* --silent 1: send digital silence (all-zero payload), a caller who says nothing; the
 * frames then carry no numbers, so nothing is matched (use with --expect none). */
static int g_silent = 0;
/* --expect none: the app does not echo (record, ivr): loss is then the server's outbound
 * frames missing from the measured window (out_short), and inbound completeness is checked
 * by the caller of this program (load_bench.py: recordings and the server's counters). */
static int g_expect_echo = 1;
static int tfd = -1;        /* the tick timer */
static const char *g_host = "127.0.0.1";

/* global state */
static call_t *calls;
static int epfd;
static int64_t max_seq;
static int payload_len, frame_len, kind;
static int64_t t0;
static int64_t *tick_time; /* actual write start of each global tick (for echo latency) */
static int64_t n_ticks_total;
static int64_t k_measure_start = -1, k_measure_end = -1; /* global ticks [start, end) */
static int in_window; /* 1 while measuring arrivals */

/* stats */
static hist_t h_gap_user, h_gap_kern, h_late, h_tickdur, h_echo;
static uint64_t reads_total, reads_window, reads_multi, frames_rx_total, silence_rx, echo_rx, bad_rx;
static uint64_t dup_echo, foreign_echo, short_writes, eagain_writes, connect_fail;
static uint64_t missed_ticks, hangups, eofs, sent_window, sent_total;
static int connected;

static void die(const char *m) { perror(m); exit(2); }

static void call_kill(call_t *c) {
    if (c->state == ST_DEAD || c->state == ST_IDLE) return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = ST_DEAD;
}

static int write_whole(call_t *c, const uint8_t *buf, int len) {
    if (c->pend_len) { /* still behind: queue (rare) */
        c->pend = realloc(c->pend, c->pend_len + len);
        memcpy(c->pend + c->pend_len, buf, len);
        c->pend_len += len;
        return 0;
    }
    ssize_t w = write(c->fd, buf, len);
    if (w == len) return 0;
    if (w < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) { eagain_writes++; w = 0; }
        else { call_kill(c); return -1; }
    } else short_writes++;
    c->pend = realloc(c->pend, len - w);
    memcpy(c->pend, buf + w, len - w);
    c->pend_len = len - w;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = c->idx};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

static void flush_pend(call_t *c) {
    if (!c->pend_len) return;
    ssize_t w = write(c->fd, c->pend, c->pend_len);
    if (w < 0) {
        if (errno != EAGAIN) call_kill(c);
        return;
    }
    memmove(c->pend, c->pend + w, c->pend_len - w);
    c->pend_len -= w;
    if (!c->pend_len) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = c->idx};
        epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    }
}

static void on_connected(call_t *c) {
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(c->fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    c->state = ST_UP;
    connected++;
    uint8_t uuid[19] = {0x01, 0x00, 0x10};
    for (int i = 0; i < 16; i++) uuid[3 + i] = (uint8_t)(rand() & 0xff);
    uuid[3 + 6] = (uuid[3 + 6] & 0x0f) | 0x40; /* version 4 */
    uuid[3 + 8] = (uuid[3 + 8] & 0x3f) | 0x80;
    write_whole(c, uuid, 19);
    struct epoll_event ev = {.events = EPOLLIN | (c->pend_len ? EPOLLOUT : 0), .data.u32 = c->idx};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void start_connect(call_t *c) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) { connect_fail++; c->state = ST_DEAD; return; }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(g_port)};
    inet_pton(AF_INET, g_host, &a.sin_addr);
    c->fd = fd;
    int r = connect(fd, (struct sockaddr *)&a, sizeof a);
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = c->idx};
    if (r == 0) {
        c->state = ST_CONNECTING;
        ev.events = EPOLLIN;
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
        on_connected(c);
    } else if (errno == EINPROGRESS) {
        c->state = ST_CONNECTING;
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    } else {
        connect_fail++;
        close(fd);
        c->state = ST_DEAD;
    }
}

static void on_frame(call_t *c, int fkind, const uint8_t *p, int len, int64_t t_user,
                     int64_t t_kern) {
    frames_rx_total++;
    if (fkind == 0x00) { hangups++; c->got_hangup = 1; return; }
    if (fkind < 0x10 || fkind > 0x18) { bad_rx++; return; }
    if (in_window) {
        c->rx_frames_window++;
        if (c->last_rx_user) hist_add(&h_gap_user, t_user - c->last_rx_user);
        if (c->last_rx_kern && t_kern) hist_add(&h_gap_kern, t_kern - c->last_rx_kern);
    }
    c->last_rx_user = t_user;
    c->last_rx_kern = t_kern;
    if (len < 12) { bad_rx++; return; }
    uint32_t seq, idx, magic;
    memcpy(&seq, p, 4); memcpy(&idx, p + 4, 4); memcpy(&magic, p + 8, 4);
    if (magic != MAGIC) {
        if (seq == 0 && idx == 0 && magic == 0) silence_rx++; else bad_rx++;
        return;
    }
    if (idx != c->idx) { foreign_echo++; return; }
    if (seq == 0 || seq > max_seq) { bad_rx++; return; }
    echo_rx++;
    if (c->echo_count[seq] < 255) c->echo_count[seq]++;
    if (c->echo_count[seq] > 1) dup_echo++;
    int64_t k = c->first_tick + seq - 1;
    if (k >= k_measure_start && k < k_measure_end && k < n_ticks_total && tick_time[k])
        hist_add(&h_echo, t_user - tick_time[k]);
}

static void on_readable(call_t *c) {
    uint8_t buf[RBUF];
    char cbuf[256];
    for (;;) {
        struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf};
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
                           .msg_controllen = sizeof cbuf};
        ssize_t n = recvmsg(c->fd, &m, 0);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            eofs++; c->got_eof = 1; call_kill(c); return;
        }
        if (n == 0) { eofs++; c->got_eof = 1; call_kill(c); return; }
        int64_t t_user = now_ns(), t_kern = 0;
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(&m); cm; cm = CMSG_NXTHDR(&m, cm)) {
            if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                struct timespec ts;
                memcpy(&ts, CMSG_DATA(cm), sizeof ts);
                t_kern = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec; /* realtime */
            }
        }
        reads_total++;
        int frames = 0;
        size_t off = 0;
        while (off < (size_t)n) {
            size_t take = sizeof c->rbuf - c->rlen;
            if (take > n - off) take = n - off;
            memcpy(c->rbuf + c->rlen, buf + off, take);
            c->rlen += take;
            off += take;
            int pos = 0;
            while (c->rlen - pos >= 3) {
                int k = c->rbuf[pos];
                int len = (c->rbuf[pos + 1] << 8) | c->rbuf[pos + 2];
                if (len + 3 > (int)sizeof c->rbuf) { bad_rx++; call_kill(c); return; }
                if (c->rlen - pos < 3 + len) break;
                on_frame(c, k, c->rbuf + pos + 3, len, t_user, t_kern);
                frames++;
                pos += 3 + len;
            }
            memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
            c->rlen -= pos;
        }
        if (in_window) { reads_window++; if (frames > 1) reads_multi++; }
        if (c->state == ST_DEAD) return;
        if (n < (ssize_t)sizeof buf) return;
    }
}

/* One epoll_wait (timeout in ms) and the handling of what it returned; 1 if the tick timer
 * fired. Also called between writes of a tick so the server's frames are read (and stamped
 * on the read clock) while this thread is still sending: a send phase of 1000 writes takes
 * several ms, and frames that arrive meanwhile would otherwise all look late by that much. */
static int pump(int timeout_ms) {
    static struct epoll_event evs[1024];
    int tick_due = 0;
    int n = epoll_wait(epfd, evs, 1024, timeout_ms);
    if (n < 0) { if (errno == EINTR) return 0; die("epoll_wait"); }
    for (int i = 0; i < n; i++) {
        uint32_t id = evs[i].data.u32;
        if (id == 0xffffffffu) {
            uint64_t exp;
            if (read(tfd, &exp, sizeof exp) > 0) tick_due = 1;
            continue;
        }
        call_t *c = &calls[id];
        if (c->state == ST_DEAD) continue;
        if (c->state == ST_CONNECTING) {
            int err = 0; socklen_t el = sizeof err;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
            if (err) { connect_fail++; call_kill(c); continue; }
            on_connected(c);
            continue;
        }
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) on_readable(c);
        if (c->state == ST_UP && (evs[i].events & EPOLLOUT)) flush_pend(c);
    }
    return tick_due;
}

static void do_tick(int64_t k, uint8_t *frame) {
    tick_time[k] = now_ns();
    if (k >= k_measure_end) return; /* drain: send nothing, let the echoes come back */
    int measuring = (k >= k_measure_start && k < k_measure_end);
    for (int i = 0; i < g_calls; i++) {
        call_t *c = &calls[i];
        if (c->state != ST_UP) continue;
        if (c->next_seq > max_seq) continue;
        if (c->next_seq == 1) c->first_tick = k;
        uint32_t seq = c->next_seq++;
        if (!g_silent) {
            memcpy(frame + 3, &seq, 4);
            memcpy(frame + 7, &c->idx, 4);
        }
        write_whole(c, frame, frame_len);
        sent_total++;
        if (measuring) sent_window++;
        if (g_pump_every && (i + 1) % g_pump_every == 0) pump(0);
    }
}

static void usage(void) {
    fprintf(stderr, "loadgen --port P --calls N [--rate 8000|16000] [--ramp 200] [--settle 2]"
                    " [--duration 20] [--drain 1] [--host 127.0.0.1] [--spin 0|1] [--pump-every N]"
                    " [--silent 0|1] [--expect echo|none]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--port")) g_port = atoi(v);
        else if (!strcmp(a, "--calls")) g_calls = atoi(v);
        else if (!strcmp(a, "--rate")) g_rate = atoi(v);
        else if (!strcmp(a, "--ramp")) g_ramp = atof(v);
        else if (!strcmp(a, "--settle")) g_settle = atof(v);
        else if (!strcmp(a, "--duration")) g_duration = atof(v);
        else if (!strcmp(a, "--drain")) g_drain = atof(v);
        else if (!strcmp(a, "--host")) g_host = v;
        else if (!strcmp(a, "--spin")) g_spin = atoi(v);
        else if (!strcmp(a, "--pump-every")) g_pump_every = atoi(v);
        else if (!strcmp(a, "--silent")) g_silent = atoi(v);
        else if (!strcmp(a, "--expect")) g_expect_echo = strcmp(v, "none") != 0;
        else usage();
    }
    signal(SIGPIPE, SIG_IGN);
    srand((unsigned)now_ns());
    if (g_rate == 8000) { kind = 0x10; payload_len = 320; }
    else if (g_rate == 16000) { kind = 0x12; payload_len = 640; }
    else usage();
    frame_len = 3 + payload_len;
    uint8_t *frame = calloc(1, frame_len);
    frame[0] = kind; frame[1] = payload_len >> 8; frame[2] = payload_len & 0xff;
    if (!g_silent) {
        uint32_t magic = MAGIC;
        memcpy(frame + 11, &magic, 4);
        for (int i = 15; i < frame_len; i++) frame[i] = (uint8_t)(i * 7); /* not silence */
    }

    int64_t ramp_ticks = (int64_t)((g_calls / g_ramp) * 50.0) + 1;
    int64_t settle_ticks = (int64_t)(g_settle * 50.0);
    int64_t measure_ticks = (int64_t)(g_duration * 50.0);
    int64_t drain_ticks = (int64_t)(g_drain * 50.0);
    k_measure_start = ramp_ticks + settle_ticks;
    k_measure_end = k_measure_start + measure_ticks;
    n_ticks_total = k_measure_end + drain_ticks;
    max_seq = n_ticks_total + 2;
    tick_time = calloc(n_ticks_total + 1, sizeof(int64_t));

    hist_init(&h_gap_user); hist_init(&h_gap_kern); hist_init(&h_late);
    hist_init(&h_tickdur); hist_init(&h_echo);

    calls = calloc(g_calls, sizeof(call_t));
    for (int i = 0; i < g_calls; i++) {
        calls[i].idx = i;
        calls[i].next_seq = 1;
        calls[i].echo_count = calloc(max_seq + 1, 1);
        calls[i].state = ST_IDLE;
    }
    epfd = epoll_create1(0);
    if (epfd < 0) die("epoll_create1");
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    if (tfd < 0) die("timerfd_create");
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = 0xffffffffu};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);

    t0 = now_ns() + TICK_NS;
    int64_t k = 0;           /* next tick to run */
    int next_connect = 0;
    double connect_credit = 0.0;
    int64_t measure_t0 = 0, measure_t1 = 0;
    for (;;) {
        int64_t deadline = t0 + k * TICK_NS;
        struct itimerspec its = {0};
        its.it_value.tv_sec = deadline / 1000000000LL;
        its.it_value.tv_nsec = deadline % 1000000000LL;
        timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        int tick_due = 0;
        while (!tick_due) {
            /* Sleeping here makes every frame the server sends wake this thread: on loopback
             * that wake-up (an IPI to this core, a VM exit on a virtual machine) is charged
             * to the server's send(). Behind a real NIC it would happen on Asterisk's host,
             * so --spin 1 keeps this thread awake on its own core instead. */
            if (pump(g_spin ? 0 : -1)) tick_due = 1;
            if (!tick_due && now_ns() >= deadline) tick_due = 1;
        }
        /* run every tick that is due (catch up on missed ones, each counted) */
        int64_t now = now_ns();
        while (k < n_ticks_total && t0 + k * TICK_NS <= now) {
            int64_t dl = t0 + k * TICK_NS;
            int64_t late = now_ns() - dl;
            if (k == k_measure_start) {
                in_window = 1;
                measure_t0 = now_ns();
                printf("{\"event\": \"measure_start\", \"connected\": %d}\n", connected);
                fflush(stdout);
            }
            if (k == k_measure_end) {
                in_window = 0;
                measure_t1 = now_ns();
                printf("{\"event\": \"measure_end\"}\n");
                fflush(stdout);
            }
            if (k >= k_measure_start && k < k_measure_end) {
                hist_add(&h_late, late);
                if (late >= TICK_NS) missed_ticks++;
            }
            /* ramp: connect at g_ramp per second */
            if (next_connect < g_calls) {
                connect_credit += g_ramp / 50.0;
                while (connect_credit >= 1.0 && next_connect < g_calls) {
                    start_connect(&calls[next_connect++]);
                    connect_credit -= 1.0;
                }
            }
            int64_t s = now_ns();
            do_tick(k, frame);
            if (k >= k_measure_start && k < k_measure_end) hist_add(&h_tickdur, now_ns() - s);
            k++;
            now = now_ns();
        }
        if (k >= n_ticks_total) break;
    }
    /* hang up every call: close the socket, as Asterisk does */
    int alive = 0;
    for (int i = 0; i < g_calls; i++) {
        if (calls[i].state == ST_UP) alive++;
        call_kill(&calls[i]);
    }

    /* loss: every seq sent during the measured window must have come back exactly once */
    uint64_t expected = 0, ok = 0, lost = 0, dup_frames = 0, calls_with_loss = 0;
    uint64_t rx_min = UINT64_MAX, rx_max = 0, out_short = 0;
    for (int i = 0; i < g_calls; i++) {
        call_t *c = &calls[i];
        if (c->first_tick == 0 && c->next_seq == 1) continue;
        uint64_t l = 0;
        /* The server's frames in the window: one a tick; a frame either side of the window's
         * edges is phase, not loss. */
        uint64_t want = (uint64_t)(k_measure_end - k_measure_start);
        if (c->rx_frames_window + 1 < want) out_short += want - 1 - c->rx_frames_window;
        if (c->rx_frames_window < rx_min) rx_min = c->rx_frames_window;
        if (c->rx_frames_window > rx_max) rx_max = c->rx_frames_window;
        if (!g_expect_echo) {
            if (c->rx_frames_window + 1 < want) calls_with_loss++;
            continue;
        }
        for (int64_t kk = k_measure_start; kk < k_measure_end; kk++) {
            int64_t seq = kk - c->first_tick + 1;
            if (seq < 1 || seq >= c->next_seq) continue;
            expected++;
            uint8_t e = c->echo_count[seq];
            if (e == 0) { lost++; l++; }
            else { ok++; if (e > 1) dup_frames++; }
        }
        if (l) calls_with_loss++;
    }
    if (!g_expect_echo) lost = out_short;
    double wall = (measure_t1 - measure_t0) / 1e9;
    printf("{\"event\": \"result\", \"calls\": %d, \"rate\": %d, \"connected\": %d, "
           "\"alive_at_end\": %d, \"connect_fail\": %llu, \"hangups_rx\": %llu, \"eofs\": %llu, "
           "\"measure_s\": %.3f, \"sent_window\": %llu, \"expected\": %llu, \"echo_ok\": %llu, "
           "\"lost\": %llu, \"dup_frames\": %llu, \"calls_with_loss\": %llu, "
           "\"foreign_echo\": %llu, \"bad_rx\": %llu, \"silence_rx\": %llu, \"echo_rx\": %llu, "
           "\"frames_rx_total\": %llu, \"rx_per_call_window_min\": %llu, "
           "\"rx_per_call_window_max\": %llu, \"reads_window\": %llu, \"reads_multi_frame\": %llu, "
           "\"short_writes\": %llu, \"eagain_writes\": %llu, \"gen_missed_ticks\": %llu, "
           "\"out_short\": %llu, \"sent_total\": %llu, \"expect_echo\": %d, \"silent\": %d, ",
           g_calls, g_rate, connected, alive, (unsigned long long)connect_fail,
           (unsigned long long)hangups, (unsigned long long)eofs, wall,
           (unsigned long long)sent_window, (unsigned long long)expected,
           (unsigned long long)ok, (unsigned long long)lost, (unsigned long long)dup_frames,
           (unsigned long long)calls_with_loss, (unsigned long long)foreign_echo,
           (unsigned long long)bad_rx, (unsigned long long)silence_rx,
           (unsigned long long)echo_rx, (unsigned long long)frames_rx_total,
           (unsigned long long)(rx_min == UINT64_MAX ? 0 : rx_min), (unsigned long long)rx_max,
           (unsigned long long)reads_window, (unsigned long long)reads_multi,
           (unsigned long long)short_writes, (unsigned long long)eagain_writes,
           (unsigned long long)missed_ticks, (unsigned long long)out_short,
           (unsigned long long)sent_total, g_expect_echo, g_silent);
    hist_json(stdout, "gap_read", &h_gap_user); printf(", ");
    hist_json(stdout, "gap_kernel", &h_gap_kern); printf(", ");
    hist_json(stdout, "echo_latency", &h_echo); printf(", ");
    hist_json(stdout, "gen_lateness", &h_late); printf(", ");
    hist_json(stdout, "gen_tick_write", &h_tickdur);
    printf("}\n");
    fflush(stdout);
    return 0;
}
