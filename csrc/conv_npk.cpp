// Fused exact NPK propagation through a run of gated 'same' convolutions, for hard (0/1) gates.
//
// One layer maps the pair kernel M of one pair of samples (a P x P matrix, P = H x W positions,
// M[(r, c), (r', c')] stored row-major) to
//     M'(i, i') = ov(i, i') * (bias + sum_o M(i + o, i' + o)),   ov(i, i') = popcount(gx(i) & gy(i'))
// with o over the kh x kw kernel offsets and i + o, i' + o inside the image (zero padding) or taken
// modulo the image size (circular padding). The gates are bit-packed: gx of one sample is `words`
// rows of P 64-bit words (channel 64 w + b is bit b of word w), so an overlap is `words` ANDs and
// popcounts. Both the offset sum and the gate product keep r' - r fixed, so the slabs
// M[(r, :), (r', :)] (W x W) of one diagonal r' - r = d of the slab grid (mod H when circular) go
// through all the layers of the run without the rest of M: the work is (pair, diagonal) items, each
// read once from M_in (or formed from the input features), carried through the layers in two small
// buffers that stay in L2 (rows padded with zeros or wrapped entries), and written once to M_out (or
// only summed, for a global average pool); items are spread over OpenMP threads with no barrier.
// Within a layer the offset sum is separable: along the columns, T(r, r') = sum_ox of slab (r, r')
// shifted by (ox, ox); along the rows, sum_oy T(r + oy, r' + oy), summed row by row, multiplied by
// the overlaps (computed on the fly, never stored) and written once.
// Plain C ABI (called through ctypes); no torch headers, so it builds in a second.
#include <algorithm>
#include <cstdint>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

struct Layer {
    int kh, kw, circular;
    double bias;
    int words;
    const uint64_t* gx;  // (n, words, P)
    const uint64_t* gy;  // (m, words, P)
};

inline int wrap(int i, int n) { return ((i % n) + n) % n; }

// Per-thread buffers: the column-shifted sums of the slabs on one diagonal, a padded slab, one row.
template <typename T>
struct Scratch {
    std::vector<T> tsum, pad, acc, row;
    void resize(int H, int W, int kw) {
        row.resize(std::max(row.size(), (size_t)W));
        tsum.resize(std::max(tsum.size(), (size_t)H * W * W));
        pad.resize(std::max(pad.size(), (size_t)W * (W + kw)));
        acc.resize(std::max(acc.size(), (size_t)W));
    }
};

// The rx entries on each side of a row of W: zeros, or the row's wrapped entries (circular).
template <typename T>
inline void fill_halo(T* row, int W, int rx, bool circ) {
    for (int q = 0; q < rx; ++q) {
        row[q - rx] = circ ? row[wrap(q - rx, W)] : T(0);
        row[W + q] = circ ? row[wrap(q, W)] : T(0);
    }
}

// out[j] = init + sum_k rows[k][j], with the common k = 1, 2, 3 unrolled.
template <typename T>
inline void sum_rows(T* __restrict out, const T* const* rows, int k, int W, T init) {
    const T* __restrict r0 = rows[0];
    if (k == 3) {
        const T *__restrict r1 = rows[1], *__restrict r2 = rows[2];
        for (int j = 0; j < W; ++j) out[j] = init + r0[j] + r1[j] + r2[j];
    } else if (k == 2) {
        const T* __restrict r1 = rows[1];
        for (int j = 0; j < W; ++j) out[j] = init + r0[j] + r1[j];
    } else {
        for (int j = 0; j < W; ++j) out[j] = init + r0[j];
        for (int q = 1; q < k; ++q)
            for (int j = 0; j < W; ++j) out[j] += rows[q][j];
    }
}

// out(c, c') = sum_ox S(c + ox, c' + ox) for one W x W slab S whose row c starts at slab + c * stride
// and holds rx zeros (zero padding) or wrapped entries (circular) on each side, so that every
// shifted add is a full row of W.
template <typename T>
void column_sums(const T* __restrict slab, int64_t stride, int W, int rx, bool circ, T* __restrict out) {
    const T* rows[64];
    for (int c = 0; c < W; ++c) {
        int k = 0;
        for (int ox = -rx; ox <= rx; ++ox) {
            int sc = c + ox;
            if (circ) sc = wrap(sc, W);
            else if (sc < 0 || sc >= W) continue;
            rows[k++] = slab + sc * stride + ox;
        }
        sum_rows(out + (size_t)c * W, rows, k, W, T(0));
    }
}

// out[j] = ov(i, (rp, j)) * acc[j] for one output row; ov = sum_w popcount(gx(i)_w & gy(rp, j)_w).
template <typename T>
inline void gate_row(T* __restrict out, const T* __restrict acc, const uint64_t* __restrict gxa, int64_t i,
                     const uint64_t* __restrict gy0, int64_t P, int W, int words) {
    if (words == 1) {
        const uint64_t g = gxa[i];
        for (int j = 0; j < W; ++j) out[j] = static_cast<T>(__builtin_popcountll(g & gy0[j])) * acc[j];
    } else if (words == 2) {
        const uint64_t g0 = gxa[i], g1 = gxa[P + i];
        const uint64_t* __restrict gy1 = gy0 + P;
        for (int j = 0; j < W; ++j)
            out[j] = static_cast<T>(__builtin_popcountll(g0 & gy0[j]) + __builtin_popcountll(g1 & gy1[j])) * acc[j];
    } else {
        for (int j = 0; j < W; ++j) {
            int64_t cnt = 0;
            for (int w = 0; w < words; ++w) cnt += __builtin_popcountll(gxa[(size_t)w * P + i] & gy0[(size_t)w * P + j]);
            out[j] = static_cast<T>(cnt) * acc[j];
        }
    }
}

// Where slab (r, r') of a pair's kernel starts, and the stride of its rows: in the P x P row-major
// layout of the tensors npk passes in and gets back ("flat"), or in a buffer holding one diagonal,
// its slabs one after the other from row `lo` on, each row padded with rx entries on both sides.
constexpr int SLAB_PAD = 16;   // slabs 64 bytes off 4 KiB multiples (no 4K aliasing between them)
struct Layout {
    int H, W, lo, rx;
    bool flat;
    int64_t stride() const { return flat ? (int64_t)H * W : W + 2 * rx; }
    int64_t start(int r, int rp) const {
        if (flat) return (int64_t)r * W * H * W + (int64_t)rp * W;
        return (int64_t)(r - lo) * (W * stride() + SLAB_PAD) + rx;
    }
};

// Where a layer reads: a pair kernel in `layout`, or, for the first layer of a run that starts at the
// network's input, the pair's input features x, y (c0 x P each): M(i, i') = sum_c x(c, i) y(c, i').
template <typename T>
struct Source {
    const T* M;
    Layout layout;
    const T *x, *y;
    int c0;
};

// One layer on diagonal d of the slab grid: output slabs (r, r + d), mod H when circular. Their row
// shifts read only source slabs of the same diagonal, so diagonals are independent. The output goes
// to dst in out_layout, or, when `sum` is given, only its total is added to *sum.
template <typename T>
void diagonal_step(const Source<T>& src, T* __restrict dst, Layout out_layout, double* sum, int H, int W, int d,
                   const Layer& L, const uint64_t* gxa, const uint64_t* gyb, Scratch<T>& buf) {
    const int64_t P = (int64_t)H * W;
    const int ry = L.kh / 2, rx = L.kw / 2;
    const bool circ = L.circular != 0;
    const int lo = circ ? 0 : std::max(0, -d), hi = circ ? H : std::min(H, H - d);   // rows r on the diagonal
    auto col = [&](int r) { return circ ? wrap(r + d, H) : r + d; };
    const size_t WW = (size_t)W * W;
    const Layout& in = src.layout;
    const int64_t istride = in.stride();
    for (int r = lo; r < hi; ++r) {
        const int rp = col(r);
        if (!in.flat && !src.x) {               // padded rows in a diagonal buffer: use in place
            column_sums(src.M + in.start(r, rp), istride, W, rx, circ, buf.tsum.data() + r * WW);
            continue;
        }
        if (r + 1 < hi && !src.x) {   // the next slab of the diagonal, while this one is summed
            const char* next = reinterpret_cast<const char*>(src.M + in.start(r + 1, col(r + 1)));
            for (int c = 0; c < W; ++c)
                for (size_t byte = 0; byte < W * sizeof(T); byte += 64)
                    __builtin_prefetch(next + c * istride * sizeof(T) + byte);
        }
        const int PW = W + 2 * rx;              // else copy the slab's rows, padded, into buf.pad
        for (int c = 0; c < W; ++c) {
            T* __restrict prow = buf.pad.data() + (size_t)c * PW + rx;
            if (src.x) {
                const int64_t i = (int64_t)r * W + c;
                std::fill(prow, prow + W, T(0));
                for (int k = 0; k < src.c0; ++k) {
                    const T xv = src.x[k * P + i];
                    const T* __restrict yrow = src.y + k * P + (int64_t)rp * W;
                    for (int j = 0; j < W; ++j) prow[j] += xv * yrow[j];
                }
            } else {
                const T* __restrict srow = src.M + in.start(r, rp) + c * istride;
                for (int j = 0; j < W; ++j) prow[j] = srow[j];
            }
            fill_halo(prow, W, rx, circ);
        }
        column_sums(buf.pad.data() + rx, PW, W, rx, circ, buf.tsum.data() + r * WW);
    }
    const T bias = static_cast<T>(L.bias);
    T* acc = buf.acc.data();
    const T *slabs[64], *rows[64];
    const int64_t ostride = out_layout.stride();
    for (int r = lo; r < hi; ++r) {
        const int rp = col(r);
        T* out = sum ? nullptr : dst + out_layout.start(r, rp);
        int k = 0;
        for (int oy = -ry; oy <= ry; ++oy) {
            int sr = r + oy;
            if (circ) sr = wrap(sr, H);
            else if (sr < lo || sr >= hi) continue;
            slabs[k++] = buf.tsum.data() + sr * WW;
        }
        for (int c = 0; c < W; ++c) {
            for (int q = 0; q < k; ++q) rows[q] = slabs[q] + (size_t)c * W;
            sum_rows(acc, rows, k, W, bias);
            T* orow = sum ? buf.row.data() : out + c * ostride;
            gate_row(orow, acc, gxa, (int64_t)r * W + c, gyb + (size_t)rp * W, P, W, L.words);
            if (sum) {
                double total = 0;
                for (int j = 0; j < W; ++j) total += orow[j];
                *sum += total;
            } else if (!out_layout.flat && circ) {
                fill_halo(orow, W, out_layout.rx, true);
            }
        }
    }
}

// M_out (n, m, P, P) <- the run applied to M_in (n, m, P, P), or to the input kernel of features
// x (n, c0, P), y (m, c0, P) when x is given; with `reduce`, M_out (n, m, diagonals) gets the sum of
// each diagonal of the result instead (for a global average pool right after the run).
template <typename T>
int run(const T* M_in, const T* x, const T* y, int c0, T* M_out, double* sums, int64_t n, int64_t m, int H, int W,
        int n_layers, const int* kh, const int* kw, const int* circular, const double* bias, const int* words,
        const uint64_t* const* gx, const uint64_t* const* gy, int threads) {
    const int64_t P = (int64_t)H * W, PP = P * P;
    std::vector<Layer> layers(n_layers);
    int kw_max = 1;
    for (int l = 0; l < n_layers; ++l) {
        if (words[l] < 1 || words[l] > 64 || kh[l] > 63 || kw[l] > 63) return 1;
        if (circular[l] != circular[0]) return 2;    // zero and circular diagonals differ
        layers[l] = Layer{kh[l], kw[l], circular[l], bias[l], words[l], gx[l], gy[l]};
        kw_max = std::max(kw_max, kw[l]);
    }
    const bool circ = circular[0] != 0;
    const int diags = circ ? H : 2 * H - 1, RX = kw_max / 2;
    const int64_t items = n * m * diags, slab = (int64_t)W * (W + 2 * RX) + SLAB_PAD;
#pragma omp parallel num_threads(std::max(1, threads))
    {
        static thread_local Scratch<T> buf;      // kept between calls (no page faults per call)
        buf.resize(H, W, kw_max);
        static thread_local std::vector<T> ping;
        ping.resize(std::max(ping.size(), (size_t)(2 * H * slab)));
        std::fill(ping.begin(), ping.end(), T(0));     // the zero halos of the padded rows
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; ++item) {
            const int64_t ab = item / diags, a = ab / m, b = ab % m;
            const int q = (int)(item % diags), d = circ ? q : q - (H - 1), lo = circ ? 0 : std::max(0, -d);
            const Layout flat{H, W, 0, 0, true}, local{H, W, lo, RX, false};
            T *A = ping.data(), *B = ping.data() + H * slab;
            if (sums) sums[item] = 0;
            for (int l = 0; l < n_layers; ++l) {
                const Layer& L = layers[l];
                const bool last = l == n_layers - 1;
                const Source<T> src = l > 0 ? Source<T>{A, local, nullptr, nullptr, 0}
                                   : x ? Source<T>{nullptr, flat, x + a * c0 * P, y + b * c0 * P, c0}
                                       : Source<T>{M_in + ab * PP, flat, nullptr, nullptr, 0};
                diagonal_step(src, last ? (sums ? nullptr : M_out + ab * PP) : B, last ? flat : local, last && sums ? sums + item : nullptr,
                              H, W, d, L, L.gx + a * L.words * P, L.gy + b * L.words * P, buf);
                std::swap(A, B);
            }
        }
    }
    return 0;
}

}  // namespace

extern "C" {

int npk_conv_run_f32(const float* M_in, const float* x, const float* y, int c0, float* M_out, double* sums,
                     int64_t n, int64_t m, int H, int W, int n_layers, const int* kh, const int* kw,
                     const int* circular, const double* bias, const int* words, const uint64_t* const* gx,
                     const uint64_t* const* gy, int threads) {
    return run(M_in, x, y, c0, M_out, sums, n, m, H, W, n_layers, kh, kw, circular, bias, words, gx, gy, threads);
}

int npk_conv_run_f64(const double* M_in, const double* x, const double* y, int c0, double* M_out, double* sums,
                     int64_t n, int64_t m, int H, int W, int n_layers, const int* kh, const int* kw,
                     const int* circular, const double* bias, const int* words, const uint64_t* const* gx,
                     const uint64_t* const* gy, int threads) {
    return run(M_in, x, y, c0, M_out, sums, n, m, H, W, n_layers, kh, kw, circular, bias, words, gx, gy, threads);
}

// Rate probe for the benchmark: `reps` passes of AND + popcount over two arrays of n 64-bit words
// (n small enough to stay in cache), on `threads` threads; returns the total popcount so that the
// work cannot be optimised away.
int64_t npk_and_popcount(const uint64_t* x, const uint64_t* y, int64_t n, int64_t reps, int threads) {
    int64_t total = 0;
#ifdef _OPENMP
    if (threads > 0) omp_set_num_threads(threads);
#endif
#pragma omp parallel for reduction(+ : total) schedule(static)
    for (int64_t r = 0; r < reps; ++r) {
        int64_t s = 0;
        const uint64_t salt = (uint64_t)r;
        for (int64_t i = 0; i < n; ++i) s += __builtin_popcountll((x[i] ^ salt) & y[i]);
        total += s;
    }
    return total;
}

}
