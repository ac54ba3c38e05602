/* The CPU's clock and its fused multiply-add rate, measured on one core.
 *
 * clock: a chain of dependent integer adds retires one add per cycle on every x86 core of the
 * last decade, so adds per second is the clock the core ran at. FMA rate: twelve independent
 * accumulators (enough to cover the FMA latency) of the widest vector the build targets. Each
 * figure is the best of many short bursts, so that a burst another process interrupted does not
 * count: on a shared machine the fastest burst is the one that ran alone.
 *
 * Built and run by benchmarks/hardware.py:  cc -O2 -mavx512f -mfma peak.c  (or -mavx2 -mfma)
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double adds_per_second(long n) {
    long a = 0;
    double t = now();
    __asm__ volatile(
        "mov %1, %%rcx\n"
        "1:\n"
        "add $1, %0\n add $1, %0\n add $1, %0\n add $1, %0\n"
        "add $1, %0\n add $1, %0\n add $1, %0\n add $1, %0\n"
        "sub $8, %%rcx\n jnz 1b\n"
        : "+r"(a)
        : "r"(n)
        : "rcx");
    return n / (now() - t);
}

#ifdef __AVX512F__
typedef __m512 vec;
#define LANES 16
#define SET(x) _mm512_set1_ps(x)
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define ADD(a, b) _mm512_add_ps(a, b)
#define SUM(a) _mm512_reduce_add_ps(a)
#else
typedef __m256 vec;
#define LANES 8
#define SET(x) _mm256_set1_ps(x)
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define ADD(a, b) _mm256_add_ps(a, b)
static float SUM(__m256 a) {
    float f[8];
    _mm256_storeu_ps(f, a);
    return f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7];
}
#endif

static volatile float sink;

static double flops_per_second(long iterations) {
    /* Distinct starting values: equal ones would let the compiler merge the chains. */
    vec a0 = SET(0.1f), a1 = SET(0.2f), a2 = SET(0.3f), a3 = SET(0.4f), a4 = SET(0.5f),
        a5 = SET(0.6f), a6 = SET(0.7f), a7 = SET(0.8f), a8 = SET(0.9f), a9 = SET(1.1f),
        a10 = SET(1.2f), a11 = SET(1.3f);
    vec m = SET(0.9999f), c = SET(0.0001f);
    double t = now();
    for (long i = 0; i < iterations; i++) {
        a0 = FMA(a0, m, c); a1 = FMA(a1, m, c); a2 = FMA(a2, m, c); a3 = FMA(a3, m, c);
        a4 = FMA(a4, m, c); a5 = FMA(a5, m, c); a6 = FMA(a6, m, c); a7 = FMA(a7, m, c);
        a8 = FMA(a8, m, c); a9 = FMA(a9, m, c); a10 = FMA(a10, m, c); a11 = FMA(a11, m, c);
    }
    double s = now() - t;
    vec total = ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7)));
    sink = SUM(ADD(total, ADD(ADD(a8, a9), ADD(a10, a11))));
    return iterations * 12.0 * LANES * 2 / s;
}

int main(void) {
    double clock = 0, flops = 0;
    for (int r = 0; r < 3000; r++) {
        double f = adds_per_second(2000000);
        if (f > clock) clock = f;
    }
    for (int r = 0; r < 3000; r++) {
        double f = flops_per_second(100000);
        if (f > flops) flops = f;
    }
    printf("{\"clock_hz\": %.6g, \"fma_flops_per_second\": %.6g, \"lanes\": %d}\n", clock, flops,
           LANES);
    return 0;
}
