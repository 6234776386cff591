// What this disk gives durable small writes, with nothing of EFS in the way: 16 clients each
// wait until their record is on disk before sending the next (as wrk's 16 PUT connections do),
// one committer appends whatever records are waiting to a preallocated log with one `pwrite`
// and makes them durable with one `fdatasync` (a group commit), then answers them all.
//
//   gcc -O2 -pthread -o /tmp/durable_ceiling bench/durable_ceiling.c
//   /tmp/durable_ceiling DIR [RECORD_BYTES]   # DIR on the disk under test; 4096 by default
//
// RECORD_BYTES 26112 writes what EFS's index writes per 4 KiB PUT (docs/benchmarks.md). Prints
// records made durable per second, commits per second, the mean group and the mean fdatasync.
// Leaves DIR/durable-ceiling.log (1 GiB) behind for the next run; delete it when done.
// Used for the "PUT 4 KiB" paragraph of docs/benchmarks.md, not by the harness.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CLIENTS 16
#define MAX_RECORD (1 << 20)
#define LOG_BYTES (1L << 30)

static long record = 4096;
static int fd;
static char *buf;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work = PTHREAD_COND_INITIALIZER;
static pthread_cond_t durable = PTHREAD_COND_INITIALIZER;
static int waiting;                // records waiting for the next commit
static unsigned long committed[CLIENTS];  // per client: commits that carried its record
static int pending[CLIENTS];
static atomic_long records, commits;
static atomic_int stop;
static double sync_seconds;  // committer only

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec / 1e9;
}

static void *committer(void *arg) {
  (void)arg;
  long off = 0;
  int group[CLIENTS];
  while (!atomic_load(&stop)) {
    pthread_mutex_lock(&mu);
    while (waiting == 0 && !atomic_load(&stop)) pthread_cond_wait(&work, &mu);
    int n = waiting;
    memcpy(group, pending, sizeof(int) * n);
    waiting = 0;
    pthread_mutex_unlock(&mu);
    if (n == 0) continue;
    if (off + n * record > LOG_BYTES) off = 0;
    if (pwrite(fd, buf, n * record, off) != n * record) { perror("pwrite"); exit(1); }
    off += n * record;
    double t0 = now();
    if (fdatasync(fd) != 0) { perror("fdatasync"); exit(1); }
    sync_seconds += now() - t0;
    atomic_fetch_add(&commits, 1);
    atomic_fetch_add(&records, n);
    pthread_mutex_lock(&mu);
    for (int i = 0; i < n; i++) committed[group[i]]++;
    pthread_cond_broadcast(&durable);
    pthread_mutex_unlock(&mu);
  }
  return NULL;
}

static void *client(void *arg) {
  int id = (int)(long)arg;
  while (!atomic_load(&stop)) {
    pthread_mutex_lock(&mu);
    unsigned long seen = committed[id];
    pending[waiting++] = id;
    pthread_cond_signal(&work);
    while (committed[id] == seen && !atomic_load(&stop)) pthread_cond_wait(&durable, &mu);
    pthread_mutex_unlock(&mu);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 2) { fprintf(stderr, "usage: %s DIR [RECORD_BYTES]\n", argv[0]); return 2; }
  if (argc > 2) record = atol(argv[2]);
  if (record < 1 || record > MAX_RECORD) { fprintf(stderr, "RECORD_BYTES: 1 to %d\n", MAX_RECORD); return 2; }
  buf = malloc((size_t)CLIENTS * record);
  memset(buf, 0xab, (size_t)CLIENTS * record);
  char path[4096];
  snprintf(path, sizeof path, "%s/durable-ceiling.log", argv[1]);
  fd = open(path, O_RDWR | O_CREAT, 0600);
  if (fd < 0) { perror(path); return 1; }
  // Written (not only allocated) once, so that an fdatasync has no metadata to write.
  if (lseek(fd, 0, SEEK_END) < LOG_BYTES) {
    char *zeros = calloc(1, 1 << 20);
    for (long o = 0; o < LOG_BYTES; o += 1 << 20)
      if (pwrite(fd, zeros, 1 << 20, o) != 1 << 20) { perror("preallocate"); return 1; }
    fsync(fd);
    free(zeros);
  }
  pthread_t threads[CLIENTS + 1];
  pthread_create(&threads[0], NULL, committer, NULL);
  for (int i = 0; i < CLIENTS; i++) pthread_create(&threads[i + 1], NULL, client, (void *)(long)i);
  sleep(1);  // warm-up
  long r0 = atomic_load(&records), c0 = atomic_load(&commits);
  double s0 = sync_seconds, t0 = now();
  sleep(5);
  long r1 = atomic_load(&records), c1 = atomic_load(&commits);
  double s1 = sync_seconds, t1 = now();
  long c = c1 - c0 > 0 ? c1 - c0 : 1;
  printf("record %ld bytes, 16 clients: %.0f records durable/s; %.0f commits/s, mean group %.1f, "
         "mean fdatasync %.3f ms\n",
         record, (r1 - r0) / (t1 - t0), (c1 - c0) / (t1 - t0), (double)(r1 - r0) / c,
         (s1 - s0) / c * 1e3);
  fflush(stdout);
  _exit(0);  // the threads are still waiting
}
