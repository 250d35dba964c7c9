/* Closed-loop socketmap load generator: N connections, one request at a time on each, as
 * Postfix's socketmap client does.  One thread and epoll, so that the client costs as
 * little CPU as possible and the server under test is what limits the rate.
 *
 *   loadgen -t unix:PATH|inet:HOST:PORT -k KEYFILE [-n MAPNAME] [-c CONNS]
 *           [-s SECONDS] [-w WARMUP_SECONDS] [-r RATE] [-o]
 *
 * KEYFILE has one key per line; connection i asks keys i, i+CONNS, i+2*CONNS, ... (wrapping).
 * Each request's latency runs from just before its write(2) to the read(2) that completes
 * its reply.  -r RATE paces the load instead: RATE requests per second in all, each
 * connection sending at its own even interval (still one request at a time, so a slow reply
 * delays that connection's next request); latency then runs from the time a request was
 * due, not sent, so that a server which falls behind is not flattered by the client waiting
 * for it (coordinated omission).  Requests answered during the warm-up are not recorded.  -o: ask every key
 * once and stop (used to fill a server's cache).  Prints one line:
 *
 *   count=... seconds=... rate=... p50_us=... p90_us=... p99_us=... p999_us=... max_us=...
 *   errors=... answered=... sent_p50_us=... sent_p99_us=... sent_p999_us=... held=...
 *   client_late=...
 *
 * count: replies recorded (after the warm-up); answered: all replies, warm-up included;
 * errors counts replies that start with neither "OK" nor "NOTFOUND".  sent_*: the same
 * requests timed from their write(2) instead (paced: without the time a request waited for
 * its connection's previous reply); held: paced requests written more than 1 ms after they
 * were due because that reply came after then (that wait); client_late: paced requests
 * written more than 1 ms late although their connection was free when they were due (this
 * client was late: it did not get a CPU in time).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE 4096  /* one reply: socketmap replies are short */
#define MAX_EVENTS 256

struct conn {
    int fd;
    size_t next;     /* index of the next key this connection asks */
    size_t have;
    uint64_t sent_at;  /* when the request went out, or was due when paced */
    uint64_t wrote_at; /* when it went out */
    uint64_t replied_at; /* when the previous reply came */
    int late;          /* paced, written over 1 ms late: 1 held by that reply, 2 the client */
    uint64_t due;      /* paced: when the next request is due */
    int waiting;       /* a request is out */
    char buf[BUF_SIZE];
};

static char **requests;
static size_t *request_len, nkeys;
static uint32_t *lat, *sent_lat;  /* from when due (or sent), from when sent */
static size_t nlat, caplat, held, client_late;
static uint64_t interval_ns;  /* paced: between one connection's requests; 0: closed loop */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) { perror(what); exit(1); }

static void load_keys(const char *path, const char *name) {
    FILE *fh = fopen(path, "r");
    char line[2048];
    size_t cap = 1024;
    if (!fh) die(path);
    requests = malloc(cap * sizeof *requests);
    request_len = malloc(cap * sizeof *request_len);
    while (fgets(line, sizeof line, fh)) {
        line[strcspn(line, "\r\n")] = 0;
        if (!line[0]) continue;
        if (nkeys == cap) {
            cap *= 2;
            requests = realloc(requests, cap * sizeof *requests);
            request_len = realloc(request_len, cap * sizeof *request_len);
        }
        size_t payload = strlen(name) + 1 + strlen(line);
        char *req = malloc(payload + 16);
        request_len[nkeys] = (size_t)sprintf(req, "%zu:%s %s,", payload, name, line);
        requests[nkeys++] = req;
    }
    fclose(fh);
    if (!nkeys) { fprintf(stderr, "%s: no keys\n", path); exit(2); }
}

static int connect_to(const char *target) {
    int fd, one = 1;
    if (!strncmp(target, "unix:", 5)) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", target + 5);
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
    } else if (!strncmp(target, "inet:", 5)) {
        char host[256];
        const char *colon = strrchr(target + 5, ':');
        struct sockaddr_in sa = {.sin_family = AF_INET};
        if (!colon || (size_t)(colon - target - 5) >= sizeof host) { fprintf(stderr, "bad target\n"); exit(2); }
        memcpy(host, target + 5, (size_t)(colon - target - 5));
        host[colon - target - 5] = 0;
        sa.sin_port = htons((unsigned short)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) { fprintf(stderr, "bad host\n"); exit(2); }
        fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    } else {
        fprintf(stderr, "target: unix:PATH or inet:HOST:PORT\n");
        exit(2);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void send_next(struct conn *c, size_t stride) {
    const char *req = requests[c->next % nkeys];
    size_t len = request_len[c->next % nkeys], done = 0;
    c->next += stride;
    c->waiting = 1;
    c->wrote_at = now_ns();
    c->late = 0;
    if (interval_ns) {
        if (c->wrote_at > c->due + 1000000u) c->late = c->replied_at > c->due ? 1 : 2;
        c->sent_at = c->due;
        c->due += interval_ns;
    } else {
        c->sent_at = c->wrote_at;
    }
    while (done < len) {  /* a request is small: it goes in one write unless the peer stalls */
        ssize_t w = write(c->fd, req + done, len - done);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (w <= 0) die("write");
        done += (size_t)w;
    }
}

/* A whole reply in c->buf: its length, else 0. */
static size_t reply_end(const struct conn *c) {
    size_t size = 0, i = 0;
    while (i < c->have && c->buf[i] >= '0' && c->buf[i] <= '9') size = size * 10 + (size_t)(c->buf[i++] - '0');
    if (i == c->have) return 0;
    if (i == 0 || c->buf[i] != ':' || i + 2 + size > BUF_SIZE) { fprintf(stderr, "bad reply\n"); exit(1); }
    return i + 2 + size <= c->have ? i + 2 + size : 0;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static double pct_of(const uint32_t *sorted, double p) {
    if (!nlat) return 0;
    size_t i = (size_t)(p * (double)nlat);
    return sorted[i < nlat ? i : nlat - 1] / 1000.0;
}

static double pct(double p) { return pct_of(lat, p); }

int main(int argc, char **argv) {
    const char *target = NULL, *keyfile = NULL, *name = "postfix";
    int conns = 1, opt, once = 0;
    double seconds = 5, warmup = 0.5, rate = 0;
    while ((opt = getopt(argc, argv, "t:k:n:c:s:w:r:o")) != -1) {
        if (opt == 't') target = optarg;
        else if (opt == 'k') keyfile = optarg;
        else if (opt == 'n') name = optarg;
        else if (opt == 'c') conns = atoi(optarg);
        else if (opt == 's') seconds = atof(optarg);
        else if (opt == 'w') warmup = atof(optarg);
        else if (opt == 'r') rate = atof(optarg);
        else if (opt == 'o') once = 1;
        else return 2;
    }
    if (!target || !keyfile || conns < 1) {
        fprintf(stderr, "usage: %s -t TARGET -k KEYFILE [-n NAME] [-c CONNS] [-s SECS] [-w SECS] [-r RATE] [-o]\n", argv[0]);
        return 2;
    }
    load_keys(keyfile, name);
    if (once) warmup = rate = 0;
    if (rate > 0) interval_ns = (uint64_t)((double)conns * 1e9 / rate);
    caplat = 1 << 20;
    lat = malloc(caplat * sizeof *lat);
    sent_lat = malloc(caplat * sizeof *sent_lat);
    if (!lat || !sent_lat) die("malloc");
    int ep = epoll_create1(0);
    struct conn *cs = calloc((size_t)conns, sizeof *cs);
    for (int i = 0; i < conns; i++) {
        cs[i].fd = connect_to(target);
        cs[i].next = (size_t)i;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    uint64_t start = now_ns(), measure_from = start + (uint64_t)(warmup * 1e9);
    uint64_t stop = measure_from + (uint64_t)(seconds * 1e9), last = start;
    size_t errors = 0, active = 0, answered = 0;
    for (int i = 0; i < conns; i++) {
        cs[i].due = start + interval_ns * (uint64_t)i / (uint64_t)conns;  /* staggered */
        if (interval_ns) active++;
        else if (!once || cs[i].next < nkeys) { send_next(&cs[i], (size_t)conns); active++; }
    }
    struct epoll_event events[MAX_EVENTS];
    while (active) {
        struct timespec wait = {.tv_sec = 1};
        uint64_t t = now_ns();
        if (interval_ns) {  /* send what is due, sleep until the next one */
            uint64_t next = stop;
            for (int i = 0; i < conns; i++) {
                if (cs[i].waiting) continue;
                if (cs[i].due <= t) send_next(&cs[i], (size_t)conns);
                if (!cs[i].waiting && cs[i].due < next) next = cs[i].due;
            }
            uint64_t left = next > t ? next - t : 0;
            wait.tv_sec = (time_t)(left / 1000000000u);
            wait.tv_nsec = (long)(left % 1000000000u);
        }
        int n = epoll_pwait2(ep, events, MAX_EVENTS, &wait, NULL);
        t = now_ns();
        if (n < 0 && errno != EINTR) die("epoll_pwait2");
        if (!once && t >= stop) break;
        for (int e = 0; e < n; e++) {
            struct conn *c = events[e].data.ptr;
            ssize_t r = read(c->fd, c->buf + c->have, BUF_SIZE - c->have);
            if (r == 0) { fprintf(stderr, "server closed a connection\n"); return 1; }
            if (r < 0) { if (errno == EAGAIN || errno == EINTR) continue; die("read"); }
            c->have += (size_t)r;
            size_t end = reply_end(c);
            if (!end) continue;
            t = now_ns();
            const char *body = memchr(c->buf, ':', c->have) + 1;
            if (strncmp(body, "OK", 2) && strncmp(body, "NOTFOUND", 8)) errors++;
            memmove(c->buf, c->buf + end, c->have - end);  /* nothing follows: one request at a time */
            c->have -= end;
            answered++;
            last = t;
            if (once || c->sent_at >= measure_from) {
                if (nlat == caplat) {
                    caplat *= 2;
                    lat = realloc(lat, caplat * sizeof *lat);
                    sent_lat = realloc(sent_lat, caplat * sizeof *sent_lat);
                    if (!lat || !sent_lat) die("realloc");
                }
                uint64_t d = t - c->sent_at, w = t - c->wrote_at;
                if (c->late == 1) held++;
                else if (c->late == 2) client_late++;
                sent_lat[nlat] = w > UINT32_MAX ? UINT32_MAX : (uint32_t)w;
                lat[nlat++] = d > UINT32_MAX ? UINT32_MAX : (uint32_t)d;
            }
            c->waiting = 0;
            c->replied_at = t;
            if (once && c->next >= nkeys) { active--; continue; }
            if (!interval_ns || c->due <= t) send_next(c, (size_t)conns);
        }
    }
    double took = once ? (double)(last - start) / 1e9 : seconds;
    qsort(lat, nlat, sizeof *lat, cmp_u32);
    qsort(sent_lat, nlat, sizeof *sent_lat, cmp_u32);
    printf("count=%zu seconds=%.3f rate=%.0f p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f errors=%zu answered=%zu"
           " sent_p50_us=%.1f sent_p99_us=%.1f sent_p999_us=%.1f held=%zu client_late=%zu\n",
           nlat, took, took > 0 ? (double)nlat / took : 0.0, pct(0.5), pct(0.9), pct(0.99), pct(0.999),
           nlat ? lat[nlat - 1] / 1000.0 : 0.0, errors, answered,
           pct_of(sent_lat, 0.5), pct_of(sent_lat, 0.99), pct_of(sent_lat, 0.999), held,
           client_late);
    return 0;
}
