// Fused exact NPK propagation through a run of gated 'same' convolutions, for hard (0/1) gates.
//
// One layer maps the pair kernel M of one pair of samples (a P x P matrix, P = H x W positions,
// M[(r, c), (r', c')] stored row-major) to
//     M'(i, i') = ov(i, i') * (bias + sum_o M(i + o, i' + o)),   ov(i, i') = popcount(gx(i) & gy(i'))
// with o over the kh x kw kernel offsets and i + o, i' + o inside the image (zero padding) or taken
// modulo the image size (circular padding). The gates are bit-packed: gx of one sample is `words`
// rows of P 64-bit words (channel 64 w + b is bit b of word w), so an overlap is `words` ANDs and
// popcounts. Work is one output slab M'[(r, :), (r', :)] (W x W) at a time: its shifted sums are
// accumulated in a W x W buffer that stays in L1, then multiplied by the overlaps computed on the
// fly, so M' is written once and ov is never stored. All layers of the run are applied to one pair
// before the next pair (the pair's M stays in cache); pairs are spread over OpenMP threads.
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

// acc[c'] += src[c' + ox] over the c' whose c' + ox is inside [0, W) (zero) or wrapped (circular).
template <typename T>
inline void add_shifted(T* __restrict acc, const T* __restrict src, int W, int ox, bool circular) {
    if (!circular) {
        int lo = std::max(0, -ox), hi = std::min(W, W - ox);
        for (int j = lo; j < hi; ++j) acc[j] += src[j + ox];
        return;
    }
    int o = wrap(ox, W);  // c' in [0, W - o) reads c' + o; c' in [W - o, W) reads c' + o - W
    for (int j = 0; j < W - o; ++j) acc[j] += src[j + o];
    for (int j = W - o; j < W; ++j) acc[j] += src[j + o - W];
}

template <typename T>
void layer_step(const T* __restrict src, T* __restrict dst, int H, int W, const Layer& L,
                const uint64_t* __restrict gxa, const uint64_t* __restrict gyb, T* __restrict acc) {
    const int P = H * W, ry = L.kh / 2, rx = L.kw / 2, words = L.words;
    const bool circ = L.circular != 0;
    const T bias = static_cast<T>(L.bias);
    uint64_t gxv[64];
    for (int r = 0; r < H; ++r) {
        for (int rp = 0; rp < H; ++rp) {
            std::fill(acc, acc + W * W, T(0));
            for (int oy = -ry; oy <= ry; ++oy) {
                int sr = r + oy, srp = rp + oy;
                if (circ) { sr = wrap(sr, H); srp = wrap(srp, H); }
                else if (sr < 0 || sr >= H || srp < 0 || srp >= H) continue;
                const T* base = src + (size_t)sr * W * P + (size_t)srp * W;
                for (int c = 0; c < W; ++c) {
                    T* arow = acc + c * W;
                    for (int ox = -rx; ox <= rx; ++ox) {
                        int sc = c + ox;
                        if (circ) sc = wrap(sc, W);
                        else if (sc < 0 || sc >= W) continue;
                        add_shifted(arow, base + (size_t)sc * P, W, ox, circ);
                    }
                }
            }
            T* drow0 = dst + (size_t)r * W * P + (size_t)rp * W;
            const uint64_t* gy0 = gyb + (size_t)rp * W;
            for (int c = 0; c < W; ++c) {
                const int i = r * W + c;
                for (int w = 0; w < words; ++w) gxv[w] = gxa[(size_t)w * P + i];
                T* __restrict drow = drow0 + (size_t)c * P;
                const T* __restrict arow = acc + c * W;
                if (words == 1) {
                    const uint64_t g = gxv[0];
                    for (int j = 0; j < W; ++j)
                        drow[j] = static_cast<T>(__builtin_popcountll(g & gy0[j])) * (arow[j] + bias);
                } else if (words == 2) {
                    const uint64_t g0 = gxv[0], g1 = gxv[1];
                    const uint64_t* gy1 = gy0 + P;
                    for (int j = 0; j < W; ++j)
                        drow[j] = static_cast<T>(__builtin_popcountll(g0 & gy0[j]) + __builtin_popcountll(g1 & gy1[j]))
                                  * (arow[j] + bias);
                } else {
                    for (int j = 0; j < W; ++j) {
                        int64_t cnt = 0;
                        for (int w = 0; w < words; ++w) cnt += __builtin_popcountll(gxv[w] & gy0[(size_t)w * P + j]);
                        drow[j] = static_cast<T>(cnt) * (arow[j] + bias);
                    }
                }
            }
        }
    }
}

template <typename T>
int run(const T* M_in, T* M_out, int64_t n, int64_t m, int H, int W, int n_layers, const int* kh, const int* kw,
        const int* circular, const double* bias, const int* words, const uint64_t* const* gx,
        const uint64_t* const* gy, int threads) {
    const int64_t P = (int64_t)H * W, PP = P * P;
    std::vector<Layer> layers(n_layers);
    for (int l = 0; l < n_layers; ++l) {
        if (words[l] < 1 || words[l] > 64) return 1;
        layers[l] = Layer{kh[l], kw[l], circular[l], bias[l], words[l], gx[l], gy[l]};
    }
#ifdef _OPENMP
    if (threads > 0) omp_set_num_threads(threads);
#endif
#pragma omp parallel
    {
        std::vector<T> scratch(n_layers > 1 ? PP : 0), acc((size_t)W * W);
#pragma omp for schedule(dynamic, 1)
        for (int64_t ab = 0; ab < n * m; ++ab) {
            const int64_t a = ab / m, b = ab % m;
            T* out = M_out + ab * PP;
            const T* src = M_in + ab * PP;
            for (int l = 0; l < n_layers; ++l) {
                // ping-pong so that the last layer writes `out`
                T* dst = ((n_layers - 1 - l) % 2 == 0) ? out : scratch.data();
                const Layer& L = layers[l];
                layer_step(src, dst, H, W, L, L.gx + a * L.words * P, L.gy + b * L.words * P, acc.data());
                src = dst;
            }
        }
    }
    return 0;
}

}  // namespace

extern "C" {

int npk_conv_run_f32(const float* M_in, float* M_out, int64_t n, int64_t m, int H, int W, int n_layers,
                     const int* kh, const int* kw, const int* circular, const double* bias, const int* words,
                     const uint64_t* const* gx, const uint64_t* const* gy, int threads) {
    return run(M_in, M_out, n, m, H, W, n_layers, kh, kw, circular, bias, words, gx, gy, threads);
}

int npk_conv_run_f64(const double* M_in, double* M_out, int64_t n, int64_t m, int H, int W, int n_layers,
                     const int* kh, const int* kw, const int* circular, const double* bias, const int* words,
                     const uint64_t* const* gx, const uint64_t* const* gy, int threads) {
    return run(M_in, M_out, n, m, H, W, n_layers, kh, kw, circular, bias, words, gx, gy, threads);
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
