/* The raw loader loop the loader benchmark compares dlhost with: N cycles of
 * dlopen(RTLD_NOW | RTLD_LOCAL) + dlclose of one library, timed with
 * CLOCK_MONOTONIC. Prints nanoseconds per cycle.
 * Usage: dlloop LIBRARY N */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: dlloop LIBRARY N\n");
    return 2;
  }
  long n = atol(argv[2]);
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) {
    void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      fprintf(stderr, "dlopen: %s\n", dlerror());
      return 1;
    }
    dlclose(h);
  }
  clock_gettime(CLOCK_MONOTONIC, &b);
  double ns = (b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec);
  printf("%.1f\n", ns / n);
  return 0;
}
