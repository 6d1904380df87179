/* The cases of move_pages(2) and migrate_pages(2) that pagemig must answer exactly as the
 * kernel does, each made four ways: the raw system call, libpagemig's pagemig_* functions,
 * libnuma's numa_* functions and the plain move_pages/migrate_pages symbols (libnuma's, or
 * libpagemig_preload's under LD_PRELOAD). One line per case and way: what the call returned,
 * errno, the status array and where the pages are afterwards. The guest tests compare them.
 *
 * usage: abi_cases NODE_A NODE_B MISSING_NODE NOMEM_NODE|-1 DEAD_PID OTHER_PID
 * (OTHER_PID: a process of another user, or -1). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "pagemig.h"

/* libnuma, declared here so that no -dev package is needed. */
struct bitmask {
    unsigned long size;
    unsigned long *maskp;
};
long move_pages(int pid, unsigned long count, void **pages, const int *nodes, int *status,
                int flags);
long migrate_pages(int pid, unsigned long maxnode, const unsigned long *from,
                   const unsigned long *to);
int numa_move_pages(int pid, unsigned long count, void **pages, const int *nodes, int *status,
                    int flags);
int numa_migrate_pages(int pid, struct bitmask *from, struct bitmask *to);
struct bitmask *numa_allocate_nodemask(void);
struct bitmask *numa_bitmask_setbit(struct bitmask *, unsigned int);
void numa_bitmask_free(struct bitmask *);
int numa_num_possible_nodes(void);
void *numa_alloc(size_t size);
void numa_free(void *mem, size_t size);

#define MOVE 2
#define MOVE_ALL 4
#define PAGES 256
#define REGION (2UL << 20)

static int node_a, node_b, missing, nomem, dead_pid, other_pid;
static const char *ways[] = {"raw", "abi", "numa", "sym"};

static long call_move(int way, int pid, unsigned long count, void **pages, const int *nodes,
                      int *status, int flags) {
    switch (way) {
    case 0: return syscall(SYS_move_pages, pid, count, pages, nodes, status, flags);
    case 1: return pagemig_move_pages(pid, count, pages, nodes, status, flags);
    case 2: return numa_move_pages(pid, count, pages, nodes, status, flags);
    default: return move_pages(pid, count, pages, nodes, status, flags);
    }
}

/* A 2 MiB-aligned block of `n` pages, touched unless `untouched`, without huge pages (whether
 * a huge page is found would differ from run to run). */
static char *block(int n, int shared, int untouched) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t len = REGION + (size_t)n * page;
    char *raw = mmap(NULL, len + REGION, PROT_READ | PROT_WRITE,
                     (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    char *p = (char *)(((uintptr_t)raw + REGION - 1) & ~(REGION - 1));
    madvise(p, (size_t)n * page, MADV_NOHUGEPAGE);
    if (!untouched)
        for (int i = 0; i < n; i++)
            p[(size_t)i * page] = (char)i;
    return p;
}

/* Puts the pages on `node` with the raw call (setup, not a case). */
static void place(void **pages, int n, int node) {
    int nodes[PAGES * 2], status[PAGES * 2];
    for (int i = 0; i < n; i++)
        nodes[i] = node;
    syscall(SYS_move_pages, 0, n, pages, nodes, status, MOVE);
}

static void print_ints(const char *key, const int *v, int n) {
    printf(" %s=", key);
    for (int i = 0; i < n; i++)
        printf("%s%d", i ? "," : "", v[i]);
}

/* One line: the answer, the status array, and where the first `placed` pages are now. */
static void report(const char *name, int way, int pid, long rc, int err, void **pages,
                   const int *status, int n, int placed) {
    int after[PAGES * 2];
    printf("case=%s way=%s rc=%ld errno=%d", name, ways[way], rc, rc < 0 ? err : 0);
    if (status)
        print_ints("status", status, n);
    if (pages && placed > 0) {
        syscall(SYS_move_pages, pid, placed, pages, NULL, after, 0);
        print_ints("after", after, placed);
    }
    printf("\n");
    fflush(stdout);
}

/* `n` touched pages placed on node_a, in blocks of 64 (one 2 MiB region each: pagemig splits
 * a call only between regions). */
static int fresh(void **pages, int n, int shared) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *p = NULL;
    for (int i = 0; i < n; i++) {
        if (i % 64 == 0)
            p = block(n - i < 64 ? n - i : 64, shared, 0);
        pages[i] = p + (size_t)(i % 64) * page;
    }
    place(pages, n, node_a);
    return n;
}

static void move_case(const char *name, int way) {
    void *pages[PAGES * 2];
    int nodes[PAGES * 2], status[PAGES * 2];
    int n = 0, pid = 0, flags = MOVE, placed = -1;
    void **pp = pages;
    int *sp = status;
    const int *np = nodes;
    pid_t child = 0;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (int i = 0; i < PAGES * 2; i++)
        status[i] = -123;

    if (!strcmp(name, "query")) {
        n = fresh(pages, 16, 0);
        pages[n++] = block(1, 0, 1);          /* mapped, never touched: ENOENT */
        pages[n++] = (void *)8;               /* never mapped: EFAULT */
        pages[n++] = (void *)0x800000000000;  /* not a user address: EFAULT */
        np = NULL;
    } else if (!strcmp(name, "move") || !strcmp(name, "already")) {
        n = fresh(pages, PAGES, 0);
        for (int i = 0; i < n; i++)
            nodes[i] = !strcmp(name, "move") ? node_b : node_a;
    } else if (!strcmp(name, "mixed")) {
        /* Two blocks to two nodes, interleaved in the array block by block, plus pages the
         * kernel reports one by one. */
        int half = PAGES / 2;
        char *x = block(half, 0, 0), *y = block(half, 0, 0);
        for (int i = 0; i < half; i++) {
            pages[n] = x + (size_t)i * page;
            nodes[n++] = node_b;
        }
        place(pages, n, node_a);
        for (int i = 0; i < half; i++) {
            pages[n] = y + (size_t)i * page;
            nodes[n++] = node_a;
        }
        place(pages + half, half, node_b);
        pages[n] = block(1, 0, 1);
        nodes[n++] = node_b;
        pages[n] = (void *)8;
        nodes[n++] = node_b;
        pages[n] = (void *)0x800000000000;
        nodes[n++] = node_a;
    } else if (!strcmp(name, "shared") || !strcmp(name, "shared-move-all")) {
        n = fresh(pages, 64, 1);
        for (int i = 0; i < n; i++)
            nodes[i] = node_b;
        child = fork();
        if (child == 0) {
            volatile char sum = 0;
            for (int i = 0; i < n; i++)
                sum += *(volatile char *)pages[i];
            pause();
            _exit(sum);
        }
        usleep(200000); /* the child maps every page */
        if (!strcmp(name, "shared-move-all"))
            flags = MOVE_ALL;
    } else if (!strcmp(name, "missing-node") || !strcmp(name, "no-memory-node") ||
               !strcmp(name, "negative-node")) {
        int bad = !strcmp(name, "missing-node") ? missing
                  : !strcmp(name, "negative-node") ? -1 : nomem;
        n = fresh(pages, 64, 0);
        /* The kernel moves the pages before the bad entry, then fails. */
        for (int i = 0; i < n; i++)
            nodes[i] = i < 40 ? node_b : bad;
    } else if (!strcmp(name, "dead-pid") || !strcmp(name, "other-user")) {
        n = fresh(pages, 64, 0);
        for (int i = 0; i < n; i++)
            nodes[i] = node_b;
        pid = !strcmp(name, "dead-pid") ? dead_pid : other_pid;
    } else if (!strcmp(name, "bad-flags")) {
        n = fresh(pages, 64, 0);
        for (int i = 0; i < n; i++)
            nodes[i] = node_b;
        flags = 8;
    } else if (!strcmp(name, "bad-status") || !strcmp(name, "bad-pages")) {
        n = fresh(pages, 64, 0);
        for (int i = 0; i < n; i++)
            nodes[i] = node_b;
        if (!strcmp(name, "bad-status"))
            sp = (int *)8;
        else
            pp = (void **)8;
    } else if (!strcmp(name, "no-pages")) {
        n = 0;
    } else if (!strcmp(name, "freed")) {
        /* 64 touched pages (one region: with two threads or more pagemig splits the call), a
         * page never touched, a page only read (the kernel's shared zero page) and a page
         * freed with numa_free just before the call, where the next mapping of the process
         * would be placed: whoever answers, nothing may map it before the call has looked. */
        n = fresh(pages, 64, 0);
        char *u = block(1, 0, 1), *z = block(1, 0, 1);
        volatile char r = *z;
        (void)r;
        char *f = numa_alloc(page);
        if (!f) {
            perror("numa_alloc");
            exit(2);
        }
        memset(f, 1, page);
        numa_free(f, page);
        pages[n++] = u;
        pages[n++] = z;
        pages[n++] = f;
        for (int i = 0; i < n; i++)
            nodes[i] = node_b;
        /* Not where the freed page is afterwards: the address is free for anything of the
         * process to be mapped there, the threads pagemig starts for the call included. */
        placed = n - 1;
    }

    errno = 0;
    long rc = call_move(way, pid, (unsigned long)n, pp, np, sp, flags);
    int err = errno;
    report(name, way, pid == dead_pid || pid == other_pid ? 0 : pid, rc, err,
           pp == pages ? pages : NULL, sp == status ? status : NULL, n, placed < 0 ? n : placed);
    if (child > 0) {
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
    }
}

static long call_migrate(int way, int pid, unsigned long maxnode, unsigned long *from,
                         unsigned long *to) {
    switch (way) {
    case 0: return syscall(SYS_migrate_pages, pid, maxnode, from, to);
    case 1: return pagemig_migrate_pages(pid, maxnode, from, to);
    case 2: {
        /* libnuma's masks, with the same bits. */
        struct bitmask *f = numa_allocate_nodemask(), *t = numa_allocate_nodemask();
        for (unsigned int b = 0; b + 1 < maxnode; b++) {
            if ((from[b / 64] >> (b % 64)) & 1)
                numa_bitmask_setbit(f, b);
            if ((to[b / 64] >> (b % 64)) & 1)
                numa_bitmask_setbit(t, b);
        }
        long rc = numa_migrate_pages(pid, f, t);
        int err = errno;
        numa_bitmask_free(f);
        numa_bitmask_free(t);
        errno = err;
        return rc;
    }
    default: return migrate_pages(pid, maxnode, from, to);
    }
}

/* Node masks as long as any maxnode the cases pass: the kernel reads maxnode - 1 bits. */
#define MASK_WORDS 64

static void migrate_case(const char *name, int way) {
    void *pages[PAGES];
    unsigned long from[MASK_WORDS] = {0}, to[MASK_WORDS] = {0};
    unsigned long maxnode = (unsigned long)numa_num_possible_nodes() + 1;
    unsigned long *fp = from;
    int pid, n = PAGES;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    char *p = block(n, 0, 1);
    for (int i = 0; i < n; i++)
        pages[i] = p + (size_t)i * page;
    /* A child whose own (copied-on-write) pages are on node_a. */
    pid_t child = fork();
    if (child == 0) {
        for (int i = 0; i < n; i++)
            p[(size_t)i * page] = 1;
        place(pages, n, node_a);
        pause();
        _exit(0);
    }
    usleep(300000);
    pid = child;
    if (maxnode > MASK_WORDS * 64) {
        fprintf(stderr, "libnuma counts %lu possible nodes, more than this test's masks\n", maxnode);
        exit(2);
    }
    from[node_a / 64] |= 1UL << (node_a % 64);
    to[node_b / 64] |= 1UL << (node_b % 64);
    if (!strcmp(name, "migrate-dead-pid"))
        pid = dead_pid;
    else if (!strcmp(name, "migrate-other-user"))
        pid = other_pid;
    else if (!strcmp(name, "migrate-bad-mask"))
        fp = (unsigned long *)8;
    else if (!strcmp(name, "migrate-big-maxnode"))
        maxnode = 1UL << 20;
    errno = 0;
    /* libnuma passes its own masks and maxnode: nothing to compare. */
    long rc = way == 2 && (fp != from || maxnode != (unsigned long)numa_num_possible_nodes() + 1)
                  ? -2
                  : call_migrate(way, pid, maxnode, fp, to);
    int err = errno;
    if (rc == -2)
        printf("case=%s way=numa skipped\n", name);
    else
        report(name, way, child, rc, err, pages, NULL, n, n);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
}

int main(int argc, char **argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s NODE_A NODE_B MISSING_NODE NOMEM_NODE|-1 DEAD_PID OTHER_PID\n",
                argv[0]);
        return 2;
    }
    node_a = atoi(argv[1]);
    node_b = atoi(argv[2]);
    missing = atoi(argv[3]);
    nomem = atoi(argv[4]);
    dead_pid = atoi(argv[5]);
    other_pid = atoi(argv[6]);
    /* "freed" first: pagemig's first split call of the process starts threads, whose new
     * stacks would be mapped where the page was freed (later calls reuse cached stacks). */
    const char *moves[] = {"freed", "query", "move", "already", "mixed", "shared",
                           "shared-move-all", "missing-node", "no-memory-node", "negative-node",
                           "dead-pid", "other-user", "bad-flags", "bad-status", "bad-pages",
                           "no-pages"};
    const char *migrations[] = {"migrate", "migrate-dead-pid", "migrate-other-user",
                                "migrate-bad-mask", "migrate-big-maxnode"};
    for (size_t c = 0; c < sizeof moves / sizeof *moves; c++) {
        if ((!strcmp(moves[c], "no-memory-node") && nomem < 0) ||
            (!strcmp(moves[c], "other-user") && other_pid < 0))
            continue;
        for (int way = 0; way < 4; way++)
            move_case(moves[c], way);
    }
    for (size_t c = 0; c < sizeof migrations / sizeof *migrations; c++) {
        if (!strcmp(migrations[c], "migrate-other-user") && other_pid < 0)
            continue;
        for (int way = 0; way < 4; way++)
            migrate_case(migrations[c], way);
    }
    return 0;
}
