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
// only summed, for a global average pool); items are shared by threads first come, first served.
// Within a layer the offset sum is separable: along the columns, T(r, r') = sum_ox of slab (r, r')
// shifted by (ox, ox); along the rows, sum_oy T(r + oy, r' + oy), summed row by row, multiplied by
// the overlaps (computed on the fly, never stored) and written once.
// A layer with 0 gate words is an ungated conv (the last of a run whose gate a max pool reads);
// npk_select_sum_* then applies gate, max pool and the next layer's channel sum at the pooled resolution.
// Plain C ABI (called through ctypes); no torch headers, so it builds in a second. The binding
// (npk/kernels/_native.py) declares every exported function and refuses a library whose
// npk_conv_abi_version() differs from its own: bump NPK_CONV_ABI with any change of a signature or
// of the status codes.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define NPK_CONV_ABI 3

namespace {

// Status codes of npk_conv_run_*, one cause each (npk/kernels/_native.py words them).
enum Status { OK = 0, TOO_MANY_CHANNELS = 1, MIXED_PADDING = 2, KERNEL_TOO_LARGE = 3, NO_CHANNELS = 4,
               EMPTY_SELECTION = 5 };

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

// out[j] = ov(i, (rp, j)) * acc(j) for one output row; ov = sum_w popcount(gx(i)_w & gy(rp, j)_w).
template <typename T, typename Acc>
inline void gate_row(T* __restrict out, const Acc& acc, const uint64_t* __restrict gxa, int64_t i,
                     const uint64_t* __restrict gy0, int64_t P, int W, int words) {
    if (words == 0) {                           // an ungated conv (its gate is read by a max pool)
        for (int j = 0; j < W; ++j) out[j] = acc(j);
    } else if (words == 1) {
        const uint64_t g = gxa[i];
        for (int j = 0; j < W; ++j) out[j] = static_cast<T>(__builtin_popcountll(g & gy0[j])) * acc(j);
    } else if (words == 2) {
        const uint64_t g0 = gxa[i], g1 = gxa[P + i];
        const uint64_t* __restrict gy1 = gy0 + P;
        for (int j = 0; j < W; ++j)
            out[j] = static_cast<T>(__builtin_popcountll(g0 & gy0[j]) + __builtin_popcountll(g1 & gy1[j])) * acc(j);
    } else {
        for (int j = 0; j < W; ++j) {
            int64_t cnt = 0;
            for (int w = 0; w < words; ++w) cnt += __builtin_popcountll(gxa[(size_t)w * P + i] & gy0[(size_t)w * P + j]);
            out[j] = static_cast<T>(cnt) * acc(j);
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
            T* orow = sum ? buf.row.data() : out + c * ostride;
            const int64_t i = (int64_t)r * W + c;
            const uint64_t* gy0 = gyb + (size_t)rp * W;
            if (k == 3) {                       // the row sum of a 3-row kernel, fused into the gate product
                const T *__restrict r0 = rows[0], *__restrict r1 = rows[1], *__restrict r2 = rows[2];
                gate_row(orow, [&](int j) { return bias + r0[j] + r1[j] + r2[j]; }, gxa, i, gy0, P, W, L.words);
            } else {
                sum_rows(acc, rows, k, W, bias);
                gate_row(orow, [&](int j) { return acc[j]; }, gxa, i, gy0, P, W, L.words);
            }
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

// A thread's buffers for one item: Scratch, and the two diagonal buffers (zeroed when their shape or
// padding changes: the padded rows' halos must start as zeros for zero padding).
template <typename T>
struct Buffers {
    Scratch<T> scratch;
    std::vector<T> ping;
    int H = 0, W = 0, kw = 0;
    bool circ = false;
    void fit(int H_, int W_, int kw_, bool circ_, int64_t size) {
        scratch.resize(H_, W_, kw_);
        if (H_ != H || W_ != W || kw_ != kw || circ_ != circ || (int64_t)ping.size() < size) {
            ping.assign(std::max((int64_t)ping.size(), size), T(0));
            H = H_, W = W_, kw = kw_, circ = circ_;
        }
    }
};

// Buffers are taken from and returned to one free list (no allocation, no page faults per call).
template <typename T>
struct BufferPool {
    std::mutex mu;
    std::vector<std::unique_ptr<Buffers<T>>> free;
    std::unique_ptr<Buffers<T>> take() {
        std::lock_guard<std::mutex> lock(mu);
        if (free.empty()) return std::make_unique<Buffers<T>>();
        auto b = std::move(free.back());
        free.pop_back();
        return b;
    }
    void give(std::unique_ptr<Buffers<T>> b) {
        std::lock_guard<std::mutex> lock(mu);
        free.push_back(std::move(b));
    }
};

template <typename T>
BufferPool<T>& pool() {
    static BufferPool<T>* p = new BufferPool<T>();   // never destroyed: a helper may outlive exit()
    return *p;
}

// Items 0..total-1 of a call, claimed first come, first served by the calling thread and threads - 1
// detached helpers. The caller waits only for items that were claimed, never for a helper to start:
// on a busy machine a helper that the scheduler starts late finds nothing left and exits, so it
// cannot stall the call (a barrier, as in an OpenMP region, would wait for it).
struct Claims {
    std::atomic<int64_t> next{0}, done{0};
    int64_t total = 0;
};

template <typename T, typename Item>
void drain(Claims& c, const Item& item) {
    for (int64_t i; (i = c.next.fetch_add(1)) < c.total;) {
        auto bufs = pool<T>().take();
        item(i, *bufs);
        pool<T>().give(std::move(bufs));            // before `done`: the caller may return right after
        c.done.fetch_add(1, std::memory_order_release);
    }
}

template <typename T, typename Item>
void share(int64_t total, int threads, const Item& item) {
    auto claims = std::make_shared<Claims>();
    claims->total = total;
    auto shared_item = std::make_shared<std::function<void(int64_t, Buffers<T>&)>>(item);
    for (int t = 1; t < std::min<int64_t>(threads, total); ++t)
        std::thread([claims, shared_item] { drain<T>(*claims, *shared_item); }).detach();
    drain<T>(*claims, item);
    while (claims->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
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
        if (words[l] < 0) return NO_CHANNELS;     // 0 words: an ungated conv (see above)
        if (words[l] > 64) return TOO_MANY_CHANNELS;
        if (kh[l] > 63 || kw[l] > 63) return KERNEL_TOO_LARGE;
        if (circular[l] != circular[0]) return MIXED_PADDING;    // zero and circular diagonals differ
        layers[l] = Layer{kh[l], kw[l], circular[l], bias[l], words[l], gx[l], gy[l]};
        kw_max = std::max(kw_max, kw[l]);
    }
    const bool circ = circular[0] != 0;
    const int diags = circ ? H : 2 * H - 1, RX = kw_max / 2;
    const int64_t slab = (int64_t)W * (W + 2 * RX) + SLAB_PAD;
    auto item = [&](int64_t it, Buffers<T>& bufs) {
        const int64_t ab = it / diags, a = ab / m, b = ab % m;
        const int q = (int)(it % diags), d = circ ? q : q - (H - 1), lo = circ ? 0 : std::max(0, -d);
        const Layout flat{H, W, 0, 0, true}, local{H, W, lo, RX, false};
        bufs.fit(H, W, kw_max, circ, 2 * H * slab);
        T *A = bufs.ping.data(), *B = bufs.ping.data() + H * slab;
        if (sums) sums[it] = 0;
        for (int l = 0; l < n_layers; ++l) {
            const Layer& L = layers[l];
            const bool last = l == n_layers - 1;
            const Source<T> src = l > 0 ? Source<T>{A, local, nullptr, nullptr, 0}
                               : x ? Source<T>{nullptr, flat, x + a * c0 * P, y + b * c0 * P, c0}
                                   : Source<T>{M_in + ab * PP, flat, nullptr, nullptr, 0};
            diagonal_step(src, last ? (sums ? nullptr : M_out + ab * PP) : B, last ? flat : local,
                          last && sums ? sums + it : nullptr, H, W, d, L, L.gx + a * L.words * P,
                          L.gy + b * L.words * P, bufs.scratch);
            std::swap(A, B);
        }
    };
    share<T>(n * m * diags, threads, item);
    return OK;
}

// M_out(p, p') = sum_c gx(c, p) gy(c, p') M(sx(c, p), sy(c, p')) for each pair: a gate, the max pool
// that selects from it and the channel sum of the weight layer after it, at the pooled resolution
// (M: (n, m, P, P), the kernel every channel shares after a weight layer; sx (n, C, Q) selected flat
// positions, gx (n, C, Q) the gates there; M_out (n, m, Q, Q)). Per output row p and channel c one
// row of M is read at Q positions (in L1); items are (pair, block of output rows).
template <typename T>
int select_sum(const T* M, int64_t n, int64_t m, int64_t P, int64_t Q, int C, const int32_t* sx, const int32_t* sy,
               const T* gx, const T* gy, T* M_out, int threads) {
    if (C < 1 || P < 1 || Q < 1) return EMPTY_SELECTION;
    constexpr int64_t ROWS = 16;
    const int64_t blocks = (Q + ROWS - 1) / ROWS;
    auto item = [&](int64_t it, Buffers<T>&) {
        const int64_t ab = it / blocks, a = ab / m, b = ab % m, p0 = (it % blocks) * ROWS;
        const T* Mab = M + ab * P * P;
        const int32_t* sya = sy + b * C * Q;
        const T* gya = gy + b * C * Q;
        for (int64_t p = p0; p < std::min(Q, p0 + ROWS); ++p) {
            T* __restrict orow = M_out + ab * Q * Q + p * Q;
            std::fill(orow, orow + Q, T(0));
            for (int c = 0; c < C; ++c) {
                const T g = gx[(a * C + c) * Q + p];
                if (g == T(0)) continue;
                const T* __restrict row = Mab + (int64_t)sx[(a * C + c) * Q + p] * P;
                const int32_t* __restrict s = sya + (int64_t)c * Q;
                const T* __restrict h = gya + (int64_t)c * Q;
                for (int64_t j = 0; j < Q; ++j) orow[j] += g * h[j] * row[s[j]];
            }
        }
    };
    share<T>(n * m * blocks, threads, item);
    return OK;
}

}  // namespace

extern "C" {

int npk_select_sum_f32(const float* M, int64_t n, int64_t m, int64_t P, int64_t Q, int C, const int32_t* sx,
                       const int32_t* sy, const float* gx, const float* gy, float* M_out, int threads) {
    return select_sum(M, n, m, P, Q, C, sx, sy, gx, gy, M_out, threads);
}

int npk_select_sum_f64(const double* M, int64_t n, int64_t m, int64_t P, int64_t Q, int C, const int32_t* sx,
                       const int32_t* sy, const double* gx, const double* gy, double* M_out, int threads) {
    return select_sum(M, n, m, P, Q, C, sx, sy, gx, gy, M_out, threads);
}

int npk_conv_abi_version() { return NPK_CONV_ABI; }

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
    std::vector<int64_t> totals(std::max(1, threads), 0);
    std::vector<std::thread> team;
    for (int t = 0; t < (int)totals.size(); ++t)
        team.emplace_back([&, t] {
            int64_t s = 0;
            for (int64_t r = t; r < reps; r += (int64_t)totals.size()) {
                const uint64_t salt = (uint64_t)r;
                for (int64_t i = 0; i < n; ++i) s += __builtin_popcountll((x[i] ^ salt) & y[i]);
            }
            totals[t] = s;
        });
    for (auto& th : team) th.join();
    int64_t total = 0;
    for (int64_t v : totals) total += v;
    return total;
}

}
