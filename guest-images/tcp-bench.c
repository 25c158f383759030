/*
 * tcp-bench: VM-to-VM TCP throughput and round-trip latency, the guest
 * side of `bench-net` (the guests have busybox and nothing else).
 *
 *   tcp-bench serve PORT
 *       accept connections on PORT forever; a connection that starts with
 *       'E' is echoed byte for byte, one that starts with 'S' is read to
 *       its end and answered with the byte count (8 bytes, big-endian)
 *   tcp-bench client ADDR PORT ROUNDS BYTES
 *       ROUNDS round trips of one byte over one connection (TCP_NODELAY),
 *       then BYTES sent over another in 64 KiB writes; prints
 *       "TCP-BENCH rounds=.. rtt_p50_us=.. rtt_p99_us=.. bytes=.. ms=.. mbit_s=.."
 *
 * Every failure prints one "tcp-bench: ..." line and exits 1.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

static int fail(const char *what)
{
    fprintf(stderr, "tcp-bench: %s: %s\n", what, strerror(errno));
    return 1;
}

static unsigned long parse(const char *text, const char *what)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(text, &end, 10);
    if (errno || *end || end == text) {
        fprintf(stderr, "tcp-bench: %s %s is not a number\n", what, text);
        exit(1);
    }
    return v;
}

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static int read_all(int fd, char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void serve_one(int fd)
{
    static char buf[CHUNK];
    char mode;
    if (read_all(fd, &mode, 1) < 0)
        return;
    if (mode == 'E') {
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0)
            if (write_all(fd, buf, (size_t)n) < 0)
                return;
    } else if (mode == 'S') {
        uint64_t total = 0;
        ssize_t n;
        while ((n = read(fd, buf, sizeof buf)) > 0)
            total += (uint64_t)n;
        unsigned char out[8];
        for (int i = 0; i < 8; i++)
            out[i] = (unsigned char)(total >> (56 - 8 * i));
        write_all(fd, (const char *)out, sizeof out);
    }
}

static int serve(unsigned long port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0)
        return fail("socket");
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (bind(s, (struct sockaddr *)&addr, sizeof addr) < 0)
        return fail("bind");
    if (listen(s, 8) < 0)
        return fail("listen");
    signal(SIGCHLD, SIG_IGN);
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR)
                continue;
            return fail("accept");
        }
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pid_t pid = fork();
        if (pid == 0) {
            close(s);
            serve_one(c);
            _exit(0);
        }
        close(c);
    }
}

static int dial(const char *host, unsigned long port, char mode)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
        fprintf(stderr, "tcp-bench: %s is not an IPv4 address\n", host);
        exit(1);
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        exit(fail("socket"));
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        exit(fail("connect"));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (write_all(fd, &mode, 1) < 0)
        exit(fail("write"));
    return fd;
}

static int compare(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int client(const char *host, unsigned long port, unsigned long rounds, unsigned long bytes)
{
    if (rounds == 0 || bytes == 0) {
        fprintf(stderr, "tcp-bench: ROUNDS and BYTES must be positive\n");
        return 1;
    }
    double *rtt = calloc(rounds, sizeof *rtt);
    if (!rtt)
        return fail("calloc");
    int fd = dial(host, port, 'E');
    for (unsigned long i = 0; i < rounds; i++) {
        char b = (char)i;
        double t = now_us();
        if (write_all(fd, &b, 1) < 0 || read_all(fd, &b, 1) < 0)
            return fail("echo");
        rtt[i] = now_us() - t;
    }
    close(fd);
    qsort(rtt, rounds, sizeof *rtt, compare);

    static char buf[CHUNK];
    fd = dial(host, port, 'S');
    double t = now_us();
    for (unsigned long sent = 0; sent < bytes;) {
        size_t n = bytes - sent < CHUNK ? bytes - sent : CHUNK;
        if (write_all(fd, buf, n) < 0)
            return fail("send");
        sent += n;
    }
    if (shutdown(fd, SHUT_WR) < 0)
        return fail("shutdown");
    unsigned char in[8];
    if (read_all(fd, (char *)in, sizeof in) < 0)
        return fail("reading the count");
    double ms = (now_us() - t) / 1e3;
    uint64_t got = 0;
    for (int i = 0; i < 8; i++)
        got = got << 8 | in[i];
    if (got != bytes) {
        fprintf(stderr, "tcp-bench: the server counted %llu bytes of %lu\n",
                (unsigned long long)got, bytes);
        return 1;
    }
    printf("TCP-BENCH rounds=%lu rtt_p50_us=%.0f rtt_p99_us=%.0f bytes=%lu ms=%.1f mbit_s=%.1f\n",
           rounds, rtt[rounds / 2], rtt[(rounds * 99) / 100], bytes, ms,
           (double)bytes * 8 / 1e3 / ms);
    free(rtt);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "serve") == 0)
        return serve(parse(argv[2], "PORT"));
    if (argc == 6 && strcmp(argv[1], "client") == 0)
        return client(argv[2], parse(argv[3], "PORT"), parse(argv[4], "ROUNDS"),
                      parse(argv[5], "BYTES"));
    fprintf(stderr, "usage: tcp-bench serve PORT | tcp-bench client ADDR PORT ROUNDS BYTES\n");
    return 1;
}
