/* deepmetric's native kernels: streaming exact k-nearest-neighbour selection (float and Hamming), and
 * k-means's row argmax and greedy k-means++ seeding.
 *
 * Loaded through ctypes by deepmetric/native/__init__.py, which compiles this file on first use. Every
 * function works on caller-owned buffers and touches no Python object, so the callers run them on
 * several threads at once (ctypes releases the GIL), each thread on its own rows.
 *
 * Both kernels keep, per query, a buffer of candidates and a bound: once k candidates are known, only
 * candidates at least as good as the k-th best can still matter, so the hot loop is one comparison
 * against the bound per candidate; when the buffer fills up it is cut back to its k best (best first,
 * ties by lower index). The Hamming kernel scans its database in index order, so there a candidate that
 * ties the k-th best (and comes later) loses: it needs to be strictly closer; its integer distances let
 * a histogram move the bound with every candidate. The float selection takes candidates in any order
 * (the evaluation engine feeds the upper triangle of a symmetric matrix by rows and by columns): ties
 * with the bound are kept for the next cut to decide by index. Results equal a stable full sort's first k.
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

/* Sort ascending: quicksort (median of three) down to runs of 16, then one insertion sort. */
static void sort_keys(uint64_t *a, int64_t n) {
    while (n > 16) {
        const int64_t mid = n / 2;
        uint64_t t;
        if (a[mid] < a[0]) t = a[0], a[0] = a[mid], a[mid] = t;
        if (a[n - 1] < a[0]) t = a[0], a[0] = a[n - 1], a[n - 1] = t;
        if (a[n - 1] < a[mid]) t = a[mid], a[mid] = a[n - 1], a[n - 1] = t;
        const uint64_t pivot = a[mid];
        int64_t i = 0, j = n - 1;
        while (i <= j) {
            while (a[i] < pivot) i++;
            while (pivot < a[j]) j--;
            if (i <= j) t = a[i], a[i] = a[j], a[j] = t, i++, j--;
        }
        if (j + 1 < n - i) { /* recurse into the smaller side, loop on the larger */
            sort_keys(a, j + 1);
            a += i, n -= i;
        } else {
            sort_keys(a + i, n - i);
            n = j + 1;
        }
    }
    for (int64_t i = 1; i < n; i++) {
        const uint64_t x = a[i];
        int64_t j = i;
        for (; j > 0 && a[j - 1] > x; j--) a[j] = a[j - 1];
        a[j] = x;
    }
}

/* One query's candidates: a buffer of keys in index order, with a histogram of their distances. Only a
 * code strictly closer than the bound can enter; the bound falls as soon as k candidates are closer than
 * bound - 1 (so it is at most one above the k-th best distance so far), and a full buffer is cut back to
 * its k best. */
typedef struct {
    uint64_t *keys; /* NULL: only count the codes within the bound */
    int32_t *hist;  /* candidates per distance, levels entries */
    int64_t count, below, bound; /* below: candidates closer than the bound */
} Candidates;

typedef struct {
    int64_t k, cap, levels;
} Selection;

/* Keep the k best candidates (n >= k): those closer than the k-th best distance, then the lowest indices
 * at that distance; the bound becomes the k-th best distance. */
static void hamming_cut(Candidates *c, const Selection *s) {
    int64_t below = 0, kth = 0;
    while (below + c->hist[kth] < s->k) below += c->hist[kth++];
    int64_t room = s->k - below, kept = 0;
    memset(c->hist, 0, (size_t)s->levels * sizeof(int32_t));
    for (int64_t i = 0; i < c->count; i++) {
        const int64_t d = (int64_t)(c->keys[i] >> INDEX_BITS);
        if (d < kth || (d == kth && room-- > 0)) {
            c->keys[kept++] = c->keys[i];
            c->hist[d]++;
        }
    }
    c->count = kept;
    c->below = below;
    c->bound = kth;
}

static inline void hamming_push(Candidates *c, const Selection *s, int64_t d, int64_t j) {
    if (!c->keys) {
        c->count++;
        return;
    }
    c->keys[c->count++] = (uint64_t)d << INDEX_BITS | (uint64_t)j;
    c->hist[d]++;
    c->below++;
    while (c->below - c->hist[c->bound - 1] >= s->k) c->below -= c->hist[--c->bound];
    if (c->count == s->cap) hamming_cut(c, s);
}

/* Codes [j0, j1) against one query, a popcount each. */
static void hamming_scan_scalar(const uint64_t *q, const uint64_t *db, int64_t j0, int64_t j1, int64_t words,
                                Candidates *c, const Selection *s) {
    for (int64_t j = j0; j < j1; j++) {
        const uint64_t *code = db + j * words;
        int64_t d = 0;
        for (int64_t w = 0; w < words; w++) d += __builtin_popcountll(q[w] ^ code[w]);
        if (__builtin_expect(d < c->bound, 0)) hamming_push(c, s, d, j);
    }
}

#ifdef __AVX2__
/* Fast scan (the 4-bit lookups of faiss's PQ fast scan, here with exact Hamming tables), two queries at
 * once. A code is 16 nibbles per word; a query's table for nibble position p holds popcount(q_p ^ v) for
 * v = 0..15, so a code's distance is the sum over positions of table_p[code_p]. The database tile is
 * stored transposed: per block of 32 codes and per position, 32 bytes with that nibble of each code, so
 * one byte shuffle looks up one position of 32 codes. Two queries share each table byte (the first's
 * entry in the low nibble, the second's in the high one): one shuffle serves both, three positions add up
 * in a byte without a carry crossing the nibbles (at most 3 x 4 = 12), then each nibble goes to its
 * query's sums. Sums saturate at 255, so they are only compared with bounds below 256. */
enum { SCAN_BLOCK = 32, SCAN_TILE = 512 };

/* Transpose the nibbles of codes [j0, j0 + blocks * 32) into tile (blocks x positions x 32 bytes). */
static void nibble_tile(const uint64_t *db, int64_t j0, int64_t blocks, int64_t words, uint8_t *tile) {
    const int64_t positions = 16 * words;
    for (int64_t b = 0; b < blocks; b++)
        for (int64_t i = 0; i < SCAN_BLOCK; i++) {
            const uint64_t *code = db + (j0 + b * SCAN_BLOCK + i) * words;
            uint8_t *out = tile + b * positions * SCAN_BLOCK + i;
            for (int64_t w = 0; w < words; w++) {
                uint64_t x = code[w];
                for (int64_t p = 0; p < 16; p++, x >>= 4) out[(w * 16 + p) * SCAN_BLOCK] = (uint8_t)(x & 15);
            }
        }
}

/* The lookup tables of queries a and b: positions x 16 bytes. */
static void pair_tables(const uint64_t *a, const uint64_t *b, int64_t words, uint8_t *tables) {
    for (int64_t w = 0; w < words; w++)
        for (int64_t p = 0; p < 16; p++) {
            const unsigned na = (unsigned)(a[w] >> (4 * p)) & 15, nb = (unsigned)(b[w] >> (4 * p)) & 15;
            for (unsigned v = 0; v < 16; v++) {
                const unsigned da = (unsigned)__builtin_popcount(na ^ v), db = (unsigned)__builtin_popcount(nb ^ v);
                tables[(w * 16 + p) * 16 + v] = (uint8_t)(da | db << 4);
            }
        }
}

/* The candidates among 32 codes: lanes whose sum fell below the bound (hit: subs(bound, sum) non-zero),
 * taken in index order. */
static void take_hits(__m256i sums, __m256i hit, int64_t j0, Candidates *c, const Selection *s) {
    uint32_t lanes = ~(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(hit, _mm256_setzero_si256()));
    if (!lanes) return;
    uint8_t sum[SCAN_BLOCK];
    _mm256_storeu_si256((__m256i *)sum, sums);
    for (; lanes; lanes &= lanes - 1) {
        const int i = __builtin_ctz(lanes);
        if (sum[i] < c->bound) hamming_push(c, s, sum[i], j0 + i);
    }
}

static inline __m256i table_at(const uint8_t *tables, int64_t p) {
    return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(tables + p * 16)));
}

/* group (1 or 2) blocks of transposed codes, the first code being j, against queries a and b. */
static inline __attribute__((always_inline)) void scan_pair(const uint8_t *data, int group, int64_t positions,
                                                            const uint8_t *tables, int64_t j, Candidates *a,
                                                            Candidates *b, const Selection *s) {
    const __m256i zero = _mm256_setzero_si256(), low = _mm256_set1_epi8(0x0f);
    __m256i sum_a[2] = {zero, zero}, sum_b[2] = {zero, zero};
#pragma GCC unroll 6
    for (int64_t p0 = 0; p0 < positions; p0 += 3) {
        const int64_t p1 = positions - p0 < 3 ? positions : p0 + 3;
#pragma GCC unroll 2
        for (int g = 0; g < group; g++) {
            __m256i both = zero;
#pragma GCC unroll 3
            for (int64_t p = p0; p < p1; p++) {
                const __m256i nibbles = _mm256_loadu_si256((const __m256i *)(data + (g * positions + p) * SCAN_BLOCK));
                both = _mm256_add_epi8(both, _mm256_shuffle_epi8(table_at(tables, p), nibbles));
            }
            sum_a[g] = _mm256_adds_epu8(sum_a[g], _mm256_and_si256(both, low));
            sum_b[g] = _mm256_adds_epu8(sum_b[g], _mm256_and_si256(_mm256_srli_epi16(both, 4), low));
        }
    }
    const __m256i bound_a = _mm256_set1_epi8((char)(uint8_t)a->bound);
    const __m256i bound_b = _mm256_set1_epi8((char)(uint8_t)b->bound);
    __m256i hit_a[2], hit_b[2], any = zero;
#pragma GCC unroll 2
    for (int g = 0; g < group; g++) {
        hit_a[g] = _mm256_subs_epu8(bound_a, sum_a[g]);
        hit_b[g] = _mm256_subs_epu8(bound_b, sum_b[g]);
        any = _mm256_or_si256(any, _mm256_or_si256(hit_a[g], hit_b[g]));
    }
    if (__builtin_expect(!_mm256_testz_si256(any, any), 0))
        for (int g = 0; g < group; g++) {
            take_hits(sum_a[g], hit_a[g], j + g * SCAN_BLOCK, a, s);
            take_hits(sum_b[g], hit_b[g], j + g * SCAN_BLOCK, b, s);
        }
}

/* blocks x 32 transposed codes (the first is code j0) against queries a and b; positions is a literal
 * for one-word codes, so that the compiler unrolls the position loop. */
static inline __attribute__((always_inline)) void hamming_scan_tile(const uint8_t *tile, int64_t blocks,
                                                                    int64_t positions, const uint8_t *tables,
                                                                    int64_t j0, Candidates *a, Candidates *b,
                                                                    const Selection *s) {
    for (int64_t i = 0; i < blocks; i += 2) {
        const uint8_t *data = tile + i * positions * SCAN_BLOCK;
        if (i + 2 <= blocks)
            scan_pair(data, 2, positions, tables, j0 + i * SCAN_BLOCK, a, b, s);
        else
            scan_pair(data, 1, positions, tables, j0 + i * SCAN_BLOCK, a, b, s);
    }
}
#endif

/* Every code of db against queries [0, rows) with their states state[0..rows) (state[rows]: the spare
 * that scans an odd query out a second time, counting only). The database is read in tiles, each tile by
 * every query while it is in cache. Returns 0, or -1 when memory runs out. */
static int hamming_scan(const uint64_t *query, int64_t rows, const uint64_t *db, int64_t ndb, int64_t words,
                        Candidates *state, const Selection *s) {
#ifdef __AVX2__
    const int64_t tile_codes = SCAN_TILE, positions = 16 * words;
    uint8_t *tile = malloc((size_t)(SCAN_TILE * positions));
    uint8_t *tables = malloc((size_t)((rows + 1) / 2 * positions * 16));
    if (!tile || !tables) {
        free(tile), free(tables);
        return -1;
    }
    for (int64_t r = 0; r < rows; r += 2) {
        const uint64_t *a = query + r * words, *b = r + 1 < rows ? a + words : a;
        pair_tables(a, b, words, tables + r / 2 * positions * 16);
    }
#else
    const int64_t tile_codes = 4096;
#endif
    for (int64_t t0 = 0; t0 < ndb; t0 += tile_codes) {
        const int64_t t1 = ndb - t0 < tile_codes ? ndb : t0 + tile_codes;
        int64_t scanned = t0; /* codes before this one went through the fast scan */
#ifdef __AVX2__
        const int64_t blocks = (t1 - t0) / SCAN_BLOCK;
        nibble_tile(db, t0, blocks, words, tile);
        scanned = t0 + blocks * SCAN_BLOCK;
        for (int64_t r = 0; r < rows; r += 2) {
            Candidates *a = state + r, *b = state + (r + 1 < rows ? r + 1 : rows);
            const uint8_t *pair = tables + r / 2 * positions * 16;
            if (a->bound > 255 || b->bound > 255) { /* sums saturate: bounds of codes over 254 bits */
                const uint64_t *qa = query + r * words;
                hamming_scan_scalar(qa, db, t0, scanned, words, a, s);
                if (r + 1 < rows) hamming_scan_scalar(qa + words, db, t0, scanned, words, b, s);
            } else if (words == 1)
                hamming_scan_tile(tile, blocks, 16, pair, t0, a, b, s);
            else
                hamming_scan_tile(tile, blocks, positions, pair, t0, a, b, s);
        }
#endif
        for (int64_t r = 0; r < rows; r++)
            hamming_scan_scalar(query + r * words, db, scanned, t1, words, state + r, s);
    }
#ifdef __AVX2__
    free(tile), free(tables);
#endif
    return 0;
}

/* Per-query states for a chunk of rows queries (and the spare), each with its histogram; keys: the
 * queries' buffers, cap apart, or NULL to count only; everything can enter below bound at first. */
static void hamming_states(Candidates *state, int64_t rows, uint64_t *keys, int64_t cap, int32_t *hist,
                           int64_t levels, int64_t bound) {
    for (int64_t r = 0; r <= rows; r++) {
        memset(hist + r * levels, 0, (size_t)levels * sizeof(int32_t));
        state[r] = (Candidates){keys && r < rows ? keys + r * cap : NULL, hist + r * levels, 0, 0, bound};
    }
}

enum { QUERY_CHUNK = 1024 };

/* The k nearest of ndb codes (words uint64 each) for each of nq queries: out_dist/out_index nq x k.
 * Returns 0, or -1 when memory runs out. */
int dm_hamming_knn(const uint64_t *query, int64_t nq, const uint64_t *db, int64_t ndb, int64_t words,
                   int64_t k, int64_t *out_dist, int64_t *out_index) {
    const Selection s = {k, k < 256 ? 4 * k + 64 : 2 * k, 64 * words + 1};
    const int64_t chunk = nq < QUERY_CHUNK ? nq : QUERY_CHUNK;
    Candidates *state = malloc((size_t)(chunk + 1) * sizeof(Candidates));
    uint64_t *keys = malloc((size_t)(chunk * s.cap) * sizeof(uint64_t));
    int32_t *hist = malloc((size_t)((chunk + 1) * s.levels) * sizeof(int32_t));
    int status = state && keys && hist ? 0 : -1;
    for (int64_t q0 = 0; q0 < nq && status == 0; q0 += chunk) {
        const int64_t rows = nq - q0 < chunk ? nq - q0 : chunk;
        hamming_states(state, rows, keys, s.cap, hist, s.levels, s.levels);
        status = hamming_scan(query + q0 * words, rows, db, ndb, words, state, &s);
        for (int64_t r = 0; r < rows && status == 0; r++) {
            Candidates *c = state + r;
            if (c->count > k) hamming_cut(c, &s);
            sort_keys(c->keys, k);
            for (int64_t i = 0; i < k; i++) {
                out_dist[(q0 + r) * k + i] = (int64_t)(c->keys[i] >> INDEX_BITS);
                out_index[(q0 + r) * k + i] = (int64_t)(c->keys[i] & INDEX_MASK);
            }
        }
    }
    free(state), free(keys), free(hist);
    return status;
}

/* The codes within Hamming distance radius of each of nq queries, in two calls. keys == NULL: counts[q]
 * = how many. Otherwise keys[offsets[q] .. offsets[q + 1]) = query q's, as distance << 40 | index,
 * sorted by (distance, index). Returns 0, or -1 when memory runs out. */
int dm_hamming_radius(const uint64_t *query, int64_t nq, const uint64_t *db, int64_t ndb, int64_t words,
                      int64_t radius, const int64_t *offsets, uint64_t *keys, int64_t *counts) {
    const Selection s = {INT64_MAX, INT64_MAX, 64 * words + 1}; /* no k: never tighten, never cut */
    const int64_t chunk = nq < QUERY_CHUNK ? nq : QUERY_CHUNK;
    Candidates *state = malloc((size_t)(chunk + 1) * sizeof(Candidates));
    int32_t *hist = malloc((size_t)((chunk + 1) * s.levels) * sizeof(int32_t));
    int status = state && hist ? 0 : -1;
    for (int64_t q0 = 0; q0 < nq && status == 0; q0 += chunk) {
        const int64_t rows = nq - q0 < chunk ? nq - q0 : chunk;
        hamming_states(state, rows, NULL, 0, hist, s.levels, radius < s.levels ? radius + 1 : s.levels);
        if (keys)
            for (int64_t r = 0; r < rows; r++) state[r].keys = keys + offsets[q0 + r];
        status = hamming_scan(query + q0 * words, rows, db, ndb, words, state, &s);
        for (int64_t r = 0; r < rows && status == 0; r++) {
            counts[q0 + r] = state[r].count;
            if (keys) sort_keys(state[r].keys, state[r].count);
        }
    }
    free(state), free(hist);
    return status;
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
/* The k-th largest key of e[0..n): 256 bins between the smallest and the largest key (the bin is a
 * non-decreasing function of the key, so every key of a higher bin is larger), then a quickselect among
 * the keys of the bin that holds it only. Two branch-free passes instead of a quickselect's mispredicted
 * comparisons over all n. scratch: n floats. */
static float kth_largest_binned(const Entry *e, int64_t n, int64_t k, float *scratch) {
    enum { BINS = 256 };
    float lo = e[0].key, hi = e[0].key;
    for (int64_t i = 1; i < n; i++) {
        lo = e[i].key < lo ? e[i].key : lo;
        hi = e[i].key > hi ? e[i].key : hi;
    }
    const float scale = (BINS - 1) / (hi - lo);
    if (!(scale > 0 && scale < INFINITY)) { /* all keys equal, or a range beyond float */
        for (int64_t i = 0; i < n; i++) scratch[i] = e[i].key;
        return kth_largest(scratch, n, k);
    }
#define BIN(key) ((int)(((key) - lo) * scale))
    int32_t bins[BINS] = {0};
    for (int64_t i = 0; i < n; i++) bins[BIN(e[i].key)]++;
    int64_t above = 0, bin = BINS - 1;
    while (above + bins[bin] < k) above += bins[bin--];
    int64_t m = 0;
    for (int64_t i = 0; i < n; i++) {
        scratch[m] = e[i].key;
        m += BIN(e[i].key) == bin;
    }
#undef BIN
    return kth_largest(scratch, m, k - above);
}

static void cut(Entry *e, int64_t *count, float *bound, int64_t k, int64_t cap, float *scratch) {
    const int64_t n = *count;
    const float kth = kth_largest_binned(e, n, k, scratch);
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

/* An entry as one integer that sorts best first: the key's bits made order-preserving and inverted (high
 * half), then the index (low half), so ties go to the lower index. */
static inline uint64_t rank_key(Entry e) {
    const float key = e.key + 0.0f; /* -0 and +0 tie, as in a float comparison */
    uint32_t bits;
    memcpy(&bits, &key, sizeof bits);
    bits = bits & 0x80000000u ? ~bits : bits | 0x80000000u; /* larger float, larger unsigned */
    return (uint64_t)~bits << 32 | (uint32_t)e.index;
}

/* Write the k best of state rows row0..row0+rows into out_values/out_index (rows x k), best first;
 * slots no candidate filled get value -inf * sign and index -1. A row is first cut back to the entries
 * at least as good as its k-th best key, then sorted as integers. Returns 0, or -1 without memory. */
int dm_topk_finish(int64_t row0, int64_t rows, float sign, int64_t k, int64_t cap, Entry *entries,
                   int64_t *count, float *out_values, int64_t *out_index) {
    float *scratch = malloc((size_t)cap * sizeof(float));
    uint64_t *ranked = malloc((size_t)cap * sizeof(uint64_t));
    if (!scratch || !ranked) {
        free(scratch), free(ranked);
        return -1;
    }
    for (int64_t r = 0; r < rows; r++) {
        const int64_t row = row0 + r;
        Entry *e = entries + row * cap;
        int64_t n = count[row];
        if (n > k) {
            const float kth = kth_largest_binned(e, n, k, scratch);
            int64_t kept = 0;
            for (int64_t i = 0; i < n; i++) {
                e[kept] = e[i];
                kept += e[i].key >= kth;
            }
            n = kept;
        }
        for (int64_t i = 0; i < n; i++) ranked[i] = rank_key(e[i]);
        sort_keys(ranked, n);
        for (int64_t i = 0; i < k; i++) {
            float key = -INFINITY;
            if (i < n) { /* the key back from its bits */
                const uint32_t bits = ~(uint32_t)(ranked[i] >> 32);
                const uint32_t original = bits & 0x80000000u ? bits & 0x7fffffffu : ~bits;
                memcpy(&key, &original, sizeof key);
            }
            out_values[r * k + i] = sign * key + 0.0f;
            out_index[r * k + i] = i < n ? (int32_t)(uint32_t)ranked[i] : -1;
        }
    }
    free(scratch), free(ranked);
    return 0;
}

/* ------------------------------------------------------------------------------ row argmax */

/* The largest entry of each row of a rows x cols block (row stride ld) and its first column; with
 * out_second, also the second largest (the largest again when it occurs twice, -inf for one column). */
void dm_argmax_rows(const float *block, int64_t rows, int64_t cols, int64_t ld, float *out_value,
                    int64_t *out_index, float *out_second) {
    for (int64_t r = 0; r < rows; r++) {
        const float *s = block + r * ld;
        float best = -INFINITY, second = -INFINITY; /* the two largest values, a tie counting twice */
        int64_t c = 0;
#ifdef __AVX2__
        __m256 lanes = _mm256_set1_ps(-INFINITY), seconds = lanes;
        for (; c + 8 <= cols; c += 8) {
            const __m256 v = _mm256_loadu_ps(s + c);
            seconds = _mm256_max_ps(seconds, _mm256_min_ps(lanes, v));
            lanes = _mm256_max_ps(lanes, v);
        }
        float lane[16];
        _mm256_storeu_ps(lane, lanes);
        _mm256_storeu_ps(lane + 8, seconds);
        for (int i = 0; i < 16; i++) {
            second = lane[i] > second ? (lane[i] > best ? best : lane[i]) : second;
            best = lane[i] > best ? lane[i] : best;
        }
#endif
        for (; c < cols; c++) {
            second = s[c] > second ? (s[c] > best ? best : s[c]) : second;
            best = s[c] > best ? s[c] : best;
        }
        int64_t index = 0;
        while (index < cols - 1 && s[index] != best) index++;
        out_value[r] = best;
        out_index[r] = index;
        if (out_second) out_second[r] = second;
    }
}

/* ------------------------------------------------------------------------ greedy k-means++ seeding */

/* out[i] = max(0, ||x_i||^2 + ||c||^2 - 2 x_i . c) for every point i and each of `count` candidate
 * points c (out: count x n), eight candidates per pass over the points. */
static void squared_distances(const float *points, const float *norms, int64_t n, int64_t d,
                              const int64_t *candidates, int64_t count, float *out) {
    for (int64_t t0 = 0; t0 < count; t0 += 8) {
        const int64_t group = count - t0 < 8 ? count - t0 : 8;
        const float *c[8];
        for (int64_t t = 0; t < 8; t++) c[t] = points + candidates[t0 + (t < group ? t : 0)] * d;
        for (int64_t i = 0; i < n; i++) {
            const float *x = points + i * d;
            float dot[8] = {0};
            int64_t j = 0;
#ifdef __AVX2__
            __m256 acc[8];
            for (int t = 0; t < 8; t++) acc[t] = _mm256_setzero_ps();
            for (; j + 8 <= d; j += 8) {
                const __m256 xv = _mm256_loadu_ps(x + j);
                for (int t = 0; t < 8; t++) acc[t] = _mm256_fmadd_ps(xv, _mm256_loadu_ps(c[t] + j), acc[t]);
            }
            for (int t = 0; t < 8; t++) {
                float lane[8];
                _mm256_storeu_ps(lane, acc[t]);
                dot[t] = ((lane[0] + lane[1]) + (lane[2] + lane[3])) + ((lane[4] + lane[5]) + (lane[6] + lane[7]));
            }
#endif
            for (; j < d; j++)
                for (int t = 0; t < 8; t++) dot[t] += x[j] * c[t][j];
            for (int64_t t = 0; t < group; t++) {
                const float squared = norms[i] + norms[candidates[t0 + t]] - 2 * dot[t];
                out[(t0 + t) * n + i] = squared > 0 ? squared : 0;
            }
        }
    }
}

/* Greedy k-means++ over n points (n x d, float32, with their squared norms), as
 * deepmetric.evaluation.clustering.kmeans_plus_plus does it with torch, from the same random draws:
 * `first`, then per new centre `trials` uniforms (uniform: (k - 1) x trials). Each step draws the
 * candidates by inverse transform sampling of the squared distances to the nearest centre so far and keeps
 * the one that lowers their sum most (the first on ties). chosen: k point indices. Returns 0, or -1
 * without memory. */
int dm_kmeans_plus_plus(const float *points, const float *norms, int64_t n, int64_t d, int64_t k,
                        int64_t trials, int64_t first, const double *uniform, int64_t *chosen) {
    float *closest = malloc((size_t)n * sizeof(float));
    float *trial = malloc((size_t)(trials * n) * sizeof(float));
    double *cumulative = malloc((size_t)n * sizeof(double));
    int64_t *candidates = malloc((size_t)trials * sizeof(int64_t));
    if (!closest || !trial || !cumulative || !candidates) {
        free(closest), free(trial), free(cumulative), free(candidates);
        return -1;
    }
    chosen[0] = first;
    squared_distances(points, norms, n, d, &first, 1, closest);
    for (int64_t step = 1; step < k; step++) {
        double total = 0;
        for (int64_t i = 0; i < n; i++) cumulative[i] = total += closest[i];
        if (!(total > 0)) /* fewer distinct points than centres: any point will do */
            for (int64_t i = 0; i < n; i++) cumulative[i] = total = (double)(i + 1);
        for (int64_t t = 0; t < trials; t++) { /* the first point whose cumulative sum exceeds the target */
            const double target = uniform[(step - 1) * trials + t] * total;
            int64_t lo = 0, hi = n;
            while (lo < hi) {
                const int64_t mid = lo + (hi - lo) / 2;
                if (cumulative[mid] > target) hi = mid;
                else lo = mid + 1;
            }
            candidates[t] = lo < n ? lo : n - 1;
        }
        squared_distances(points, norms, n, d, candidates, trials, trial);
        int64_t best = 0;
        double best_sum = INFINITY;
        for (int64_t t = 0; t < trials; t++) {
            float *row = trial + t * n;
            double sum = 0;
            for (int64_t i = 0; i < n; i++) sum += row[i] = row[i] < closest[i] ? row[i] : closest[i];
            if (sum < best_sum) best_sum = sum, best = t;
        }
        chosen[step] = candidates[best];
        memcpy(closest, trial + best * n, (size_t)n * sizeof(float));
    }
    free(closest), free(trial), free(cumulative), free(candidates);
    return 0;
}
