/*
 * blkbench: a tiny block-device benchmark run inside the guest by
 * `bench-io` (tests/src/bin/bench-io.rs). Built with `gcc -static -O2` by
 * guest-initramfs.sh; the guest has busybox and nothing else.
 *
 *   blkbench randread DEV SECONDS
 *       4 KiB reads at random 4 KiB-aligned offsets over the whole device,
 *       O_DIRECT, one outstanding I/O, for SECONDS seconds. Prints
 *       BLKBENCH randread iops=N ios=N secs=S
 *   blkbench seqwrite DEV MIB
 *       MIB sequential 1 MiB writes from offset 0, O_DIRECT, then fsync;
 *       the time includes the fsync. Prints
 *       BLKBENCH seqwrite mibps=N mib=N secs=S
 *
 * Every syscall is checked: on error a message goes to stderr and the exit
 * status is 1 (2 for usage errors). Nothing is printed on stdout then.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096u
#define CHUNK (1u << 20)

__attribute__((noreturn)) static void die(const char *what, const char *dev)
{
    fprintf(stderr, "blkbench: %s %s: %s\n", what, dev, strerror(errno));
    exit(1);
}

__attribute__((noreturn)) static void usage(void)
{
    fprintf(stderr, "usage: blkbench randread DEV SECONDS\n"
                    "       blkbench seqwrite DEV MIB\n");
    exit(2);
}

/* A positive integer argument, or a usage error. */
static unsigned long arg_num(const char *s)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v == 0 || v > 1000000)
        usage();
    return v;
}

static double now(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        perror("blkbench: clock_gettime");
        exit(1);
    }
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Size in bytes of a block device (BLKGETSIZE64) or a regular file. */
static uint64_t dev_size(int fd, const char *dev)
{
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("fstat", dev);
    if (S_ISBLK(st.st_mode)) {
        uint64_t size;
        if (ioctl(fd, BLKGETSIZE64, &size) != 0)
            die("ioctl BLKGETSIZE64", dev);
        return size;
    }
    if (S_ISREG(st.st_mode))
        return (uint64_t)st.st_size;
    fprintf(stderr, "blkbench: %s is neither a block device nor a file\n", dev);
    exit(1);
}

static void *aligned(size_t len)
{
    void *buf;
    int rc = posix_memalign(&buf, BLOCK, len);
    if (rc != 0) {
        errno = rc;
        perror("blkbench: posix_memalign");
        exit(1);
    }
    return buf;
}

/* xorshift64*: cheap and good enough to pick offsets. */
static uint64_t rng_state;
static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545F4914F6CDD1DULL;
}

static int randread(const char *dev, unsigned long seconds)
{
    int fd = open(dev, O_RDONLY | O_DIRECT);
    if (fd < 0)
        die("open", dev);
    uint64_t blocks = dev_size(fd, dev) / BLOCK;
    if (blocks == 0) {
        fprintf(stderr, "blkbench: %s is smaller than %u bytes\n", dev, BLOCK);
        return 1;
    }
    char *buf = aligned(BLOCK);
    rng_state = 0x9E3779B97F4A7C15ULL ^ (uint64_t)getpid();
    double start = now(), end = start + (double)seconds, t = start;
    uint64_t ios = 0;
    while (t < end) {
        off_t off = (off_t)((rng() % blocks) * BLOCK);
        ssize_t n = pread(fd, buf, BLOCK, off);
        if (n < 0)
            die("pread", dev);
        if (n != (ssize_t)BLOCK) {
            fprintf(stderr, "blkbench: pread %s: short read of %zd bytes at %lld\n", dev, n,
                    (long long)off);
            return 1;
        }
        ios++;
        t = now();
    }
    if (close(fd) != 0)
        die("close", dev);
    double secs = t - start;
    printf("BLKBENCH randread iops=%.0f ios=%llu secs=%.3f\n", (double)ios / secs,
           (unsigned long long)ios, secs);
    return 0;
}

static int seqwrite(const char *dev, unsigned long mib)
{
    int fd = open(dev, O_WRONLY | O_DIRECT);
    if (fd < 0)
        die("open", dev);
    if (dev_size(fd, dev) < (uint64_t)mib * CHUNK) {
        fprintf(stderr, "blkbench: %s is smaller than %lu MiB\n", dev, mib);
        return 1;
    }
    char *buf = aligned(CHUNK);
    /* Non-zero data: a zero page could be special-cased somewhere. */
    for (size_t i = 0; i < CHUNK; i++)
        buf[i] = (char)(i * 31 + 7);
    double start = now();
    for (unsigned long i = 0; i < mib; i++) {
        off_t off = (off_t)i * CHUNK;
        ssize_t n = pwrite(fd, buf, CHUNK, off);
        if (n < 0)
            die("pwrite", dev);
        if (n != (ssize_t)CHUNK) {
            fprintf(stderr, "blkbench: pwrite %s: short write of %zd bytes at %lld\n", dev, n,
                    (long long)off);
            return 1;
        }
    }
    if (fsync(fd) != 0)
        die("fsync", dev);
    double secs = now() - start;
    if (close(fd) != 0)
        die("close", dev);
    printf("BLKBENCH seqwrite mibps=%.1f mib=%lu secs=%.3f\n", (double)mib / secs, mib, secs);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 4)
        usage();
    unsigned long n = arg_num(argv[3]);
    int rc;
    if (strcmp(argv[1], "randread") == 0)
        rc = randread(argv[2], n);
    else if (strcmp(argv[1], "seqwrite") == 0)
        rc = seqwrite(argv[2], n);
    else
        usage();
    /* The result line must reach the console: check the flush too. */
    if (fflush(stdout) != 0) {
        perror("blkbench: stdout");
        return 1;
    }
    return rc;
}
