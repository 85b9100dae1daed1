/* deepmetric's native kernels: streaming exact k-nearest-neighbour selection.
 *
 * Loaded through ctypes by deepmetric/native/__init__.py, which compiles this file on first use. Every
 * function works on caller-owned buffers and touches no Python object, so the callers run them on
 * several threads at once (ctypes releases the GIL), each thread on its own rows.
 *
 * Both kernels keep, per query, a buffer of candidates and a bound: once a buffer has been cut back to
 * its k best, only candidates at least as good as the k-th best can still matter, so the hot loop is
 * one comparison against the bound per candidate; when the buffer fills up it is cut back to its k best
 * (best first, ties by lower index) and the bound rises. The Hamming kernel scans its database in index
 * order, so there a candidate that ties the k-th best (and comes later) loses: it needs to be strictly
 * closer. The float selection takes candidates in any order (the evaluation engine feeds the upper
 * triangle of a symmetric matrix by rows and by columns): ties with the bound are kept for the next cut
 * to decide by index. Results equal a stable full sort's first k.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------------------ Hamming k-NN */

/* A candidate is one uint64 key, distance << 40 | index: sorting keys sorts by (distance, index). */
#define INDEX_BITS 40
#define INDEX_MASK ((UINT64_C(1) << INDEX_BITS) - 1)

/* Keep the k best keys of buf[0..n) (n >= k, buf in index order, so in order it stays), by counting
 * the distance levels; return the k-th best distance. */
static int64_t hamming_compact(uint64_t *buf, int64_t n, int64_t k, int64_t *hist, int64_t levels) {
    memset(hist, 0, (size_t)levels * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) hist[buf[i] >> INDEX_BITS]++;
    int64_t below = 0, kth = 0;
    while (below + hist[kth] < k) below += hist[kth++];
    int64_t room = k - below; /* candidates at distance kth that fit: the lowest indices */
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t d = (int64_t)(buf[i] >> INDEX_BITS);
        if (d < kth || (d == kth && room-- > 0)) buf[kept++] = buf[i];
    }
    return kth;
}

/* Append candidate (d, j) to a query's buffer; a full buffer is cut back to the k best. */
#define HAMMING_PUSH(buf, n, b, d, j)                              \
    do {                                                           \
        (buf)[(n)++] = (uint64_t)(d) << INDEX_BITS | (uint64_t)(j); \
        if ((n) == cap) {                                          \
            (b) = hamming_compact((buf), (n), k, hist, levels);    \
            (n) = k;                                               \
        }                                                          \
    } while (0)

static int compare_keys(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The k nearest of ndb codes (words uint64 each) for each of nq queries: out_dist/out_index nq x k.
 * Returns 0, or -1 when memory runs out. */
int dm_hamming_knn(const uint64_t *query, int64_t nq, const uint64_t *db, int64_t ndb, int64_t words,
                   int64_t k, int64_t *out_dist, int64_t *out_index) {
    enum { QUERY_BLOCK = 8, TILE = 8192 }; /* a tile of 8192 codes stays in L2 for the block's queries */
    const int64_t levels = 64 * words + 1;
    const int64_t cap = k < 256 ? 4 * k + 64 : 2 * k;
    uint64_t *buffers = malloc((size_t)(QUERY_BLOCK * cap) * sizeof(uint64_t));
    int64_t *hist = malloc((size_t)levels * sizeof(int64_t));
    if (!buffers || !hist) {
        free(buffers);
        free(hist);
        return -1;
    }
    for (int64_t q0 = 0; q0 < nq; q0 += QUERY_BLOCK) {
        const int64_t rows = nq - q0 < QUERY_BLOCK ? nq - q0 : QUERY_BLOCK;
        int64_t count[QUERY_BLOCK] = {0}, bound[QUERY_BLOCK];
        for (int64_t r = 0; r < rows; r++) bound[r] = levels; /* accept everything until the first cut */
        for (int64_t t0 = 0; t0 < ndb; t0 += TILE) {
            const int64_t t1 = ndb - t0 < TILE ? ndb : t0 + TILE;
            int64_t r = 0;
            if (words == 1) /* one-word codes, four queries per database load */
                for (; r + 4 <= rows; r += 4) {
                    const uint64_t *x = query + q0 + r;
                    uint64_t *f0 = buffers + r * cap, *f1 = f0 + cap, *f2 = f1 + cap, *f3 = f2 + cap;
                    int64_t n0 = count[r], n1 = count[r + 1], n2 = count[r + 2], n3 = count[r + 3];
                    int64_t b0 = bound[r], b1 = bound[r + 1], b2 = bound[r + 2], b3 = bound[r + 3];
                    int64_t j = t0;
#ifdef __AVX2__
                    /* four codes a vector: XOR, nibble-table popcount, byte sums, compare with the bounds */
                    const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1,
                                                           2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
                    const __m256i nibble = _mm256_set1_epi8(0x0f), zero = _mm256_setzero_si256();
                    const __m256i x0 = _mm256_set1_epi64x((long long)x[0]), x1 = _mm256_set1_epi64x((long long)x[1]);
                    const __m256i x2 = _mm256_set1_epi64x((long long)x[2]), x3 = _mm256_set1_epi64x((long long)x[3]);
#define POPCOUNT4(v)                                                                                   \
    _mm256_sad_epu8(_mm256_add_epi8(_mm256_shuffle_epi8(table, _mm256_and_si256((v), nibble)),         \
                                    _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16((v), 4), nibble))), \
                    zero)
                    while (j + 4 <= t1) {
                        const __m256i bv0 = _mm256_set1_epi64x(b0), bv1 = _mm256_set1_epi64x(b1);
                        const __m256i bv2 = _mm256_set1_epi64x(b2), bv3 = _mm256_set1_epi64x(b3);
                        for (; j + 4 <= t1; j += 4) {
                            const __m256i w = _mm256_loadu_si256((const __m256i *)(db + j));
                            const __m256i hit = _mm256_or_si256(
                                _mm256_or_si256(_mm256_cmpgt_epi64(bv0, POPCOUNT4(_mm256_xor_si256(w, x0))),
                                                _mm256_cmpgt_epi64(bv1, POPCOUNT4(_mm256_xor_si256(w, x1)))),
                                _mm256_or_si256(_mm256_cmpgt_epi64(bv2, POPCOUNT4(_mm256_xor_si256(w, x2))),
                                                _mm256_cmpgt_epi64(bv3, POPCOUNT4(_mm256_xor_si256(w, x3)))));
                            if (__builtin_expect(!_mm256_testz_si256(hit, hit), 0)) break;
                        }
                        /* a hit (or the tail): these four codes one by one, then reload the bounds */
                        const int64_t stop = j + 4 < t1 ? j + 4 : t1;
                        for (; j < stop; j++) {
                            const uint64_t w = db[j];
                            const int64_t d0 = __builtin_popcountll(x[0] ^ w), d1 = __builtin_popcountll(x[1] ^ w);
                            const int64_t d2 = __builtin_popcountll(x[2] ^ w), d3 = __builtin_popcountll(x[3] ^ w);
                            if (d0 < b0) HAMMING_PUSH(f0, n0, b0, d0, j);
                            if (d1 < b1) HAMMING_PUSH(f1, n1, b1, d1, j);
                            if (d2 < b2) HAMMING_PUSH(f2, n2, b2, d2, j);
                            if (d3 < b3) HAMMING_PUSH(f3, n3, b3, d3, j);
                        }
                    }
#undef POPCOUNT4
#endif
                    for (; j < t1; j++) {
                        const uint64_t w = db[j];
                        const int64_t d0 = __builtin_popcountll(x[0] ^ w), d1 = __builtin_popcountll(x[1] ^ w);
                        const int64_t d2 = __builtin_popcountll(x[2] ^ w), d3 = __builtin_popcountll(x[3] ^ w);
                        if (__builtin_expect((d0 < b0) | (d1 < b1) | (d2 < b2) | (d3 < b3), 0)) {
                            if (d0 < b0) HAMMING_PUSH(f0, n0, b0, d0, j);
                            if (d1 < b1) HAMMING_PUSH(f1, n1, b1, d1, j);
                            if (d2 < b2) HAMMING_PUSH(f2, n2, b2, d2, j);
                            if (d3 < b3) HAMMING_PUSH(f3, n3, b3, d3, j);
                        }
                    }
                    count[r] = n0, count[r + 1] = n1, count[r + 2] = n2, count[r + 3] = n3;
                    bound[r] = b0, bound[r + 1] = b1, bound[r + 2] = b2, bound[r + 3] = b3;
                }
            for (; r < rows; r++) {
                const uint64_t *q = query + (q0 + r) * words;
                uint64_t *buf = buffers + r * cap;
                int64_t n = count[r], b = bound[r];
                for (int64_t j = t0; j < t1; j++) {
                    const uint64_t *code = db + j * words;
                    int64_t d = 0;
                    for (int64_t w = 0; w < words; w++) d += __builtin_popcountll(q[w] ^ code[w]);
                    if (__builtin_expect(d < b, 0)) HAMMING_PUSH(buf, n, b, d, j);
                }
                count[r] = n;
                bound[r] = b;
            }
        }
        for (int64_t r = 0; r < rows; r++) {
            uint64_t *buf = buffers + r * cap;
            if (count[r] > k) hamming_compact(buf, count[r], k, hist, levels);
            qsort(buf, (size_t)k, sizeof(uint64_t), compare_keys);
            for (int64_t i = 0; i < k; i++) {
                out_dist[(q0 + r) * k + i] = (int64_t)(buf[i] >> INDEX_BITS);
                out_index[(q0 + r) * k + i] = (int64_t)(buf[i] & INDEX_MASK);
            }
        }
    }
    free(buffers);
    free(hist);
    return 0;
}

/* ---------------------------------------------------------------------- float top-k selection */

/* Per-row state, owned by the caller: keys[rows x cap] (scores, negated when smaller is better, so
 * larger key = better), index[rows x cap], count[rows], bound[rows] (the k-th best key once the row
 * has been cut back, -FLT_MAX before). A candidate enters when key >= bound: keys of -inf (excluded
 * items) never do, and the caller fills the slots a row could not fill with the worst value, index -1. */
typedef struct {
    float key;
    int32_t index; /* 8-byte entries: the state of a tile's rows stays in cache */
} Entry;

static inline int better(Entry a, Entry b) { return a.key > b.key || (a.key == b.key && a.index < b.index); }

/* Rearrange e[0..n) so that its k best entries come first (quickselect, median of three). */
static void select_best(Entry *e, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1;
    while (hi > lo) {
        int64_t mid = lo + (hi - lo) / 2;
        if (better(e[hi], e[lo])) { Entry t = e[lo]; e[lo] = e[hi]; e[hi] = t; }
        if (better(e[mid], e[lo])) { Entry t = e[lo]; e[lo] = e[mid]; e[mid] = t; }
        if (better(e[hi], e[mid])) { Entry t = e[mid]; e[mid] = e[hi]; e[hi] = t; }
        const Entry pivot = e[mid];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (better(e[i], pivot)) i++;
            while (better(pivot, e[j])) j--;
            if (i <= j) { Entry t = e[i]; e[i] = e[j]; e[j] = t; i++; j--; }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else return;
    }
}

static int compare_entries(const void *a, const void *b) {
    const Entry x = *(const Entry *)a, y = *(const Entry *)b;
    return better(x, y) ? -1 : (better(y, x) ? 1 : 0);
}

/* The k-th largest of keys[0..n) (quickselect; reorders keys). */
static float kth_largest(float *keys, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1;
    while (hi > lo) {
        const float pivot = keys[lo + (hi - lo) / 2];
        int64_t i = lo, j = hi;
        while (i <= j) {
            while (keys[i] > pivot) i++;
            while (keys[j] < pivot) j--;
            if (i <= j) { float t = keys[i]; keys[i] = keys[j]; keys[j] = t; i++; j--; }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
    return keys[k - 1];
}

/* Cut a full row back: the bound becomes its k-th best key and only entries at least that good stay
 * (ties included: the final sort decides them by index). Selecting on bare keys is several times
 * cheaper than on entries. Should ties at the bound fill much of the buffer, only the k best entries (by
 * key, then index) stay, so that every cut frees room for many candidates. scratch: cap floats. */
static void cut(Entry *e, int64_t *count, float *bound, int64_t k, int64_t cap, float *scratch) {
    const int64_t n = *count;
    for (int64_t i = 0; i < n; i++) scratch[i] = e[i].key;
    const float kth = kth_largest(scratch, n, k);
    int64_t kept = 0;
    for (int64_t i = 0; i < n; i++) { /* branch-free: which entries stay is unpredictable */
        e[kept] = e[i];
        kept += e[i].key >= kth;
    }
    if (kept > k + (cap - k) / 2) { /* many ties at the bound: keep room for the next candidates */
        select_best(e, kept, k);
        kept = k;
    }
    *count = kept;
    *bound = kth;
}

static inline void push(Entry *e, int64_t *count, float *bound, int64_t k, int64_t cap, float key,
                        int64_t index, float *scratch) {
    e[*count].key = key;
    e[*count].index = (int32_t)index;
    if (++*count == cap) cut(e, count, bound, k, cap, scratch);
}

/* Offer a rows x cols block (row stride ld) to the state: not transposed, row r brings candidates
 * index0 + column to state row state_row0 + r; transposed, column c brings candidates index0 + row to
 * state row state_row0 + c (the other half of a symmetric block, still read row by row). Candidates may
 * come in any order across calls. sign = 1 (larger is better) or -1. Returns 0, or -1 without memory. */
static inline int offer(const float *block, int64_t rows, int64_t cols, int64_t ld, int64_t index0,
                        int64_t state_row0, float sign, int64_t k, int64_t cap, Entry *entries,
                        int64_t *count, float *bound, const int transposed) {
    float *scratch = malloc((size_t)cap * sizeof(float));
    if (!scratch) return -1;
    for (int64_t r = 0; r < rows; r++) {
        const float *s = block + r * ld;
        int64_t c = 0;
#define OFFER(column)                                                                   \
    do {                                                                                \
        const int64_t row = state_row0 + (transposed ? (column) : r);                   \
        const float key = sign * s[column];                                             \
        if (key >= bound[row])                                                          \
            push(entries + row * cap, &count[row], &bound[row], k, cap, key,            \
                 index0 + (transposed ? r : (column)), scratch);                        \
    } while (0)
#ifdef __AVX2__
        const __m256 signs = _mm256_set1_ps(sign);
        for (; c + 8 <= cols; c += 8) {
            const __m256 bounds = transposed ? _mm256_loadu_ps(bound + state_row0 + c)
                                             : _mm256_set1_ps(bound[state_row0 + r]);
            const __m256 keys = _mm256_mul_ps(_mm256_loadu_ps(s + c), signs);
            int mask = _mm256_movemask_ps(_mm256_cmp_ps(keys, bounds, _CMP_GE_OQ));
            while (mask) { /* rare: a candidate reaches its row's bound */
                const int bit = __builtin_ctz(mask);
                mask &= mask - 1;
                OFFER(c + bit);
            }
        }
#endif
        for (; c < cols; c++) OFFER(c);
#undef OFFER
    }
    free(scratch);
    return 0;
}

int dm_topk_rows(const float *block, int64_t rows, int64_t cols, int64_t ld, int64_t index0,
                 int64_t state_row0, float sign, int64_t k, int64_t cap, Entry *entries, int64_t *count,
                 float *bound) {
    return offer(block, rows, cols, ld, index0, state_row0, sign, k, cap, entries, count, bound, 0);
}

int dm_topk_columns(const float *block, int64_t rows, int64_t cols, int64_t ld, int64_t index0,
                    int64_t state_row0, float sign, int64_t k, int64_t cap, Entry *entries, int64_t *count,
                    float *bound) {
    return offer(block, rows, cols, ld, index0, state_row0, sign, k, cap, entries, count, bound, 1);
}

/* Write the k best of state rows row0..row0+rows into out_values/out_index (rows x k), best first;
 * slots no candidate filled get value -inf * sign and index -1. */
void dm_topk_finish(int64_t row0, int64_t rows, float sign, int64_t k, int64_t cap, Entry *entries,
                    int64_t *count, float *out_values, int64_t *out_index) {
    for (int64_t r = 0; r < rows; r++) {
        const int64_t row = row0 + r;
        Entry *e = entries + row * cap;
        int64_t n = count[row];
        if (n > k) {
            select_best(e, n, k);
            n = k;
        }
        qsort(e, (size_t)n, sizeof(Entry), compare_entries);
        for (int64_t i = 0; i < k; i++) {
            out_values[r * k + i] = i < n ? sign * e[i].key : -INFINITY * sign;
            out_index[r * k + i] = i < n ? e[i].index : -1;
        }
    }
}

/* ------------------------------------------------------------------------------ row argmax */

/* The largest entry of each row of a rows x cols block (row stride ld) and its first column. */
void dm_argmax_rows(const float *block, int64_t rows, int64_t cols, int64_t ld, float *out_value,
                    int64_t *out_index) {
    for (int64_t r = 0; r < rows; r++) {
        const float *s = block + r * ld;
        float best = -INFINITY;
        int64_t c = 0;
#ifdef __AVX2__
        __m256 lanes = _mm256_set1_ps(-INFINITY);
        for (; c + 8 <= cols; c += 8) lanes = _mm256_max_ps(lanes, _mm256_loadu_ps(s + c));
        float lane[8];
        _mm256_storeu_ps(lane, lanes);
        for (int i = 0; i < 8; i++) best = lane[i] > best ? lane[i] : best;
#endif
        for (; c < cols; c++) best = s[c] > best ? s[c] : best;
        int64_t index = 0;
        while (index < cols - 1 && s[index] != best) index++;
        out_value[r] = best;
        out_index[r] = index;
    }
}
