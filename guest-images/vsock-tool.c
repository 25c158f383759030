/*
 * vsock-tool: the guest side of Stratum's vsock tests and benchmark.
 *
 *   vsock-tool serve PORT          echo every stream accepted on PORT, forever
 *   vsock-tool echo CID PORT BYTES connect to CID:PORT, send BYTES of a
 *                                  pattern, read them back, check them;
 *                                  prints "VSOCK-ECHO-OK BYTES" on success
 *
 * Static (the guest has busybox and nothing else); every failure prints one
 * "vsock-tool: ..." line and exits 1.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static int fail(const char *what)
{
    fprintf(stderr, "vsock-tool: %s: %s\n", what, strerror(errno));
    return 1;
}

static unsigned long parse(const char *text, const char *what)
{
    char *end;
    errno = 0;
    unsigned long value = strtoul(text, &end, 10);
    if (errno || *end || end == text) {
        fprintf(stderr, "vsock-tool: bad %s %s\n", what, text);
        exit(2);
    }
    return value;
}

static int write_all(int fd, const unsigned char *buf, size_t len)
{
    while (len) {
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

static void echo_stream(int fd)
{
    unsigned char buf[65536];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0 || write_all(fd, buf, (size_t)n) < 0)
            break;
    }
    close(fd);
}

static int serve(unsigned int port)
{
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = port};
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0)
        return fail("socket");
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        return fail("bind");
    if (listen(fd, 16) < 0)
        return fail("listen");
    signal(SIGCHLD, SIG_IGN); /* no zombies */
    printf("VSOCK-SERVING %u\n", port);
    fflush(stdout);
    for (;;) {
        int conn = accept(fd, NULL, NULL);
        if (conn < 0) {
            if (errno == EINTR)
                continue;
            return fail("accept");
        }
        if (fork() == 0) {
            close(fd);
            echo_stream(conn);
            _exit(0);
        }
        close(conn);
    }
}

static unsigned char pattern(size_t i) { return (unsigned char)(i * 7 + i / 251); }

static int echo(unsigned int cid, unsigned int port, size_t bytes)
{
    struct sockaddr_vm addr = {.svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port};
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0)
        return fail("socket");
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0)
        return fail("connect");
    /* Write and read in turns so neither side's buffers need to hold it all. */
    unsigned char out[16384], in[16384];
    size_t sent = 0, got = 0;
    while (got < bytes) {
        if (sent < bytes && sent - got < sizeof out) {
            size_t n = bytes - sent < sizeof out ? bytes - sent : sizeof out;
            for (size_t i = 0; i < n; i++)
                out[i] = pattern(sent + i);
            if (write_all(fd, out, n) < 0)
                return fail("write");
            sent += n;
        }
        ssize_t n = read(fd, in, sizeof in);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return fail("read");
        if (n == 0) {
            fprintf(stderr, "vsock-tool: EOF after %zu of %zu bytes\n", got, bytes);
            return 1;
        }
        for (ssize_t i = 0; i < n; i++) {
            if (in[i] != pattern(got + (size_t)i)) {
                fprintf(stderr, "vsock-tool: byte %zu differs\n", got + (size_t)i);
                return 1;
            }
        }
        got += (size_t)n;
    }
    close(fd);
    printf("VSOCK-ECHO-OK %zu\n", bytes);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "serve"))
        return serve((unsigned int)parse(argv[2], "port"));
    if (argc == 5 && !strcmp(argv[1], "echo"))
        return echo((unsigned int)parse(argv[2], "cid"), (unsigned int)parse(argv[3], "port"),
                    (size_t)parse(argv[4], "byte count"));
    fprintf(stderr, "usage: vsock-tool serve PORT | vsock-tool echo CID PORT BYTES\n");
    return 2;
}
