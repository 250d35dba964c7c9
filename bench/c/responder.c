/* The ideal socketmap server: one thread, epoll, one fixed reply per request.
 *
 * Parses netstrings ("len:name key,") strictly enough to frame them, answers each complete
 * request with the same netstring reply (default "OK secure"), and writes all the replies a
 * read produced with one write(2).  Nothing is looked up: this is the upper bound a
 * socketmap server can reach on this machine, the baseline bench/hot_path.py compares
 * policyd's cached path against.
 *
 *   responder [-u UNIX_PATH] [-t PORT] [-r REPLY]      (listens on 127.0.0.1:PORT)
 *
 * Prints "ready" on stdout once listening; stops on SIGTERM/SIGINT.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define IN_SIZE 16384   /* per-connection input buffer: one request is at most ~10 kB */
#define OUT_SIZE 65536  /* replies gathered before one write(2) */
#define MAX_EVENTS 256
#define WRITE_WAIT_MS 10000  /* a peer that reads nothing for this long is dropped */

struct conn {
    int fd;
    size_t have;
    char in[IN_SIZE];
};

static volatile sig_atomic_t stopping;
static char reply[512];
static size_t reply_len;

static void on_signal(int sig) { (void)sig; stopping = 1; }

static int listen_unix(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (fd < 0 || strlen(path) >= sizeof sa.sun_path) return -1;
    strcpy(sa.sun_path, path);
    unlink(path);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 1024) < 0) return -1;
    return fd;
}

static int listen_tcp(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (fd < 0) return -1;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 1024) < 0) return -1;
    return fd;
}

static void drop(int ep, struct conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

/* A closed-loop peer never fills the socket buffer; a pipelining one that reads slowly can,
 * and then this waits for it (blocking the others: fine for a benchmark's baseline). */
static int write_all(int fd, const char *buf, size_t len) {
    for (size_t done = 0; done < len;) {
        ssize_t w = write(fd, buf + done, len - done);
        if (w < 0 && errno == EAGAIN) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            if (poll(&p, 1, WRITE_WAIT_MS) <= 0) return -1;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        done += (size_t)w;
    }
    return 0;
}

/* Read what is there, answer every complete netstring; 0 to keep the connection. */
static int serve(struct conn *c) {
    char out[OUT_SIZE];
    size_t olen = 0, pos = 0;
    ssize_t n = read(c->fd, c->in + c->have, IN_SIZE - c->have);
    if (n == 0) return -1;
    if (n < 0) return (errno == EAGAIN || errno == EINTR) ? 0 : -1;
    c->have += (size_t)n;
    for (;;) {
        size_t size = 0, i = pos;
        while (i < c->have && c->in[i] >= '0' && c->in[i] <= '9' && i - pos < 6)
            size = size * 10 + (size_t)(c->in[i++] - '0');
        if (i == c->have) break;                      /* length not complete yet */
        if (i == pos || c->in[i] != ':') return -1;   /* not a netstring */
        if (i + 1 + size >= c->have) {
            if (i + 2 + size - pos > IN_SIZE) return -1;  /* will never fit */
            break;
        }
        if (c->in[i + 1 + size] != ',') return -1;
        pos = i + 2 + size;
        if (olen + reply_len > OUT_SIZE) {            /* a pipelining peer: send what is ready */
            if (write_all(c->fd, out, olen) < 0) return -1;
            olen = 0;
        }
        memcpy(out + olen, reply, reply_len);
        olen += reply_len;
    }
    if (pos) {
        memmove(c->in, c->in + pos, c->have - pos);
        c->have -= pos;
    }
    return write_all(c->fd, out, olen);
}

int main(int argc, char **argv) {
    const char *unix_path = NULL, *text = "OK secure";
    int port = 0, opt, listeners[2], nl = 0;
    while ((opt = getopt(argc, argv, "u:t:r:")) != -1) {
        if (opt == 'u') unix_path = optarg;
        else if (opt == 't') port = atoi(optarg);
        else if (opt == 'r') text = optarg;
        else { fprintf(stderr, "usage: %s [-u PATH] [-t PORT] [-r REPLY]\n", argv[0]); return 2; }
    }
    reply_len = (size_t)snprintf(reply, sizeof reply, "%zu:%s,", strlen(text), text);
    if (reply_len >= sizeof reply) return 2;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    if (unix_path && (listeners[nl++] = listen_unix(unix_path)) < 0) { perror("unix"); return 1; }
    if (port && (listeners[nl++] = listen_tcp(port)) < 0) { perror("tcp"); return 1; }
    if (!nl) { fprintf(stderr, "give -u and/or -t\n"); return 2; }
    int ep = epoll_create1(0);
    for (int i = 0; i < nl; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        ev.data.u64 = (uint64_t)i;  /* small integers: a listener; pointers: a connection */
        epoll_ctl(ep, EPOLL_CTL_ADD, listeners[i], &ev);
    }
    printf("ready\n");
    fflush(stdout);
    struct epoll_event events[MAX_EVENTS];
    while (!stopping) {
        int n = epoll_wait(ep, events, MAX_EVENTS, 500);
        for (int i = 0; i < n; i++) {
            if (events[i].data.u64 < 2) {
                int lfd = listeners[events[i].data.u64], fd, one = 1;
                while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    struct conn *c = malloc(sizeof *c);
                    if (!c) { close(fd); continue; }
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c->fd = fd;
                    c->have = 0;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            struct conn *c = events[i].data.ptr;
            if (serve(c) < 0) drop(ep, c);
        }
    }
    if (unix_path) unlink(unix_path);
    return 0;
}
