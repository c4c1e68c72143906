// The pipeline's own CUDA kernels (stages/src/models/kernels/cuda.rs compiles this file with
// NVRTC the first time one is needed). Each mirrors a CPU implementation in the same folder
// and computes the same values: dropout.rs (dropout_f32), top_fraction.rs
// (top_fraction_mask) and device_bn.rs (bn_*).

__device__ __forceinline__ unsigned int fmix32(unsigned int h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

// y[i] = x[i] * scale where the 24-bit draw of i is below threshold, else 0.
extern "C" __global__ void dropout_f32(const float *x, float *y, unsigned int n, unsigned int k0,
                                       unsigned int k1, unsigned int threshold, float scale) {
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        unsigned int draw = fmix32(fmix32((unsigned int)i ^ k0) + k1) >> 8;
        y[i] = draw < threshold ? x[i] * scale : 0.0f;
    }
}

// One block: mask[i] = 0 for the `zeroed` entries of smallest |s| (ties by position), else 1.
// A radix select over the bits of |s| (monotone for non-negative floats), 8 bits a pass, finds
// the key of rank zeroed - 1; entries below it are zeroed, and so are the first ties, counted
// with a block-wide prefix sum in position order.
#define TOP_THREADS 1024
extern "C" __global__ void top_fraction_mask(const float *s, float *mask, unsigned int n,
                                             unsigned int zeroed) {
    __shared__ unsigned int histogram[256];
    __shared__ unsigned int scan[TOP_THREADS];
    __shared__ unsigned int prefix, prefix_mask, rank, below, base;
    const unsigned int t = threadIdx.x;
    if (zeroed == 0) {
        for (unsigned int i = t; i < n; i += blockDim.x) mask[i] = 1.0f;
        return;
    }
    if (t == 0) {
        prefix = 0;
        prefix_mask = 0;
        rank = zeroed - 1;
        below = 0;
        base = 0;
    }
    __syncthreads();
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (unsigned int b = t; b < 256; b += blockDim.x) histogram[b] = 0;
        __syncthreads();
        for (unsigned int i = t; i < n; i += blockDim.x) {
            unsigned int k = __float_as_uint(fabsf(s[i]));
            if ((k & prefix_mask) == prefix) atomicAdd(&histogram[(k >> shift) & 0xffu], 1u);
        }
        __syncthreads();
        if (t == 0) {
            unsigned int r = rank, bin = 0;
            while (r >= histogram[bin]) {
                r -= histogram[bin];
                bin++;
            }
            rank = r;
            prefix |= bin << shift;
            prefix_mask |= 0xffu << shift;
        }
        __syncthreads();
    }
    unsigned int local = 0;
    for (unsigned int i = t; i < n; i += blockDim.x) {
        if (__float_as_uint(fabsf(s[i])) < prefix) local++;
    }
    atomicAdd(&below, local);
    __syncthreads();
    const unsigned int ties_to_zero = zeroed - below;
    for (unsigned int start = 0; start < n; start += blockDim.x) {
        const unsigned int i = start + t;
        const unsigned int k = i < n ? __float_as_uint(fabsf(s[i])) : 0u;
        const unsigned int equal = (i < n && k == prefix) ? 1u : 0u;
        scan[t] = equal;
        __syncthreads();
        for (unsigned int offset = 1; offset < blockDim.x; offset <<= 1) {
            unsigned int v = t >= offset ? scan[t - offset] : 0u;
            __syncthreads();
            scan[t] += v;
            __syncthreads();
        }
        const unsigned int ties_before = base + scan[t] - equal;
        if (i < n) {
            mask[i] = k < prefix ? 0.0f : (k > prefix ? 1.0f : (ties_before < ties_to_zero ? 0.0f : 1.0f));
        }
        __syncthreads();
        if (t == blockDim.x - 1) base += scan[t];
        __syncthreads();
    }
}

// Batch norm + ReLU (device_bn.rs): four kernels over an (n, c, hw) activation, element i in
// channel (i / hw) % c. The per-channel sums run in one block per channel, in double, like
// the CPU's f64 totals; `stats` is [mean; biased variance] (2c floats), `sums` [Σg; Σg·x̂].
#define BN_THREADS 256

// The sum of every thread's v over the block (BN_THREADS threads), given to every thread.
__device__ double bn_block_sum(double v, double *partial) {
    partial[threadIdx.x] = v;
    __syncthreads();
    for (unsigned int s = BN_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
        __syncthreads();
    }
    double total = partial[0];
    __syncthreads();
    return total;
}

__device__ __forceinline__ unsigned long long bn_index(unsigned long long j, unsigned int c,
                                                       unsigned int hw, unsigned int ch) {
    return (j / hw * c + ch) * hw + j % hw;
}

__device__ __forceinline__ float bn_inverse_std(float variance, double eps) {
    return (float)(1.0 / sqrt((double)variance + eps));
}

// Block ch: stats[ch] = mean, stats[c + ch] = mean of (x − mean)², over n·hw values.
extern "C" __global__ void bn_moments(const float *x, float *stats, unsigned int n, unsigned int c,
                                      unsigned int hw) {
    __shared__ double partial[BN_THREADS];
    const unsigned int ch = blockIdx.x;
    const unsigned long long count = (unsigned long long)n * hw;
    double sum = 0.0;
    for (unsigned long long j = threadIdx.x; j < count; j += BN_THREADS) sum += x[bn_index(j, c, hw, ch)];
    const float mean = (float)(bn_block_sum(sum, partial) / (double)count);
    double squares = 0.0;
    for (unsigned long long j = threadIdx.x; j < count; j += BN_THREADS) {
        float d = x[bn_index(j, c, hw, ch)] - mean;
        squares += (double)d * (double)d;
    }
    squares = bn_block_sum(squares, partial);
    if (threadIdx.x == 0) {
        stats[ch] = mean;
        stats[c + ch] = (float)(squares / (double)count);
    }
}

// y = (x − mean)·(s·γ) + β, then the ReLU when relu != 0.
extern "C" __global__ void bn_normalise(const float *x, const float *gamma, const float *beta,
                                        const float *stats, float *y, unsigned int n, unsigned int c,
                                        unsigned int hw, double eps, int relu) {
    const unsigned long long total = (unsigned long long)n * c * hw;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        const unsigned int ch = (unsigned int)((i / hw) % c);
        const float scale = bn_inverse_std(stats[c + ch], eps) * gamma[ch];
        const float z = (x[i] - stats[ch]) * scale + beta[ch];
        y[i] = (relu && z < 0.0f) ? 0.0f : z;
    }
}

// Block ch: sums[ch] = Σ g, sums[c + ch] = Σ g·(x − mean) · s, g = ∂L/∂y masked where y <= 0
// when relu != 0.
extern "C" __global__ void bn_gradient_sums(const float *x, const float *y, const float *g,
                                            const float *stats, float *sums, unsigned int n,
                                            unsigned int c, unsigned int hw, double eps, int relu) {
    __shared__ double partial[BN_THREADS];
    const unsigned int ch = blockIdx.x;
    const unsigned long long count = (unsigned long long)n * hw;
    const float mean = stats[ch];
    double sum_g = 0.0, sum_gx = 0.0;
    for (unsigned long long j = threadIdx.x; j < count; j += BN_THREADS) {
        const unsigned long long i = bn_index(j, c, hw, ch);
        const float gi = (relu && y[i] <= 0.0f) ? 0.0f : g[i];
        sum_g += (double)gi;
        sum_gx += (double)gi * (double)(x[i] - mean);
    }
    sum_g = bn_block_sum(sum_g, partial);
    sum_gx = bn_block_sum(sum_gx, partial);
    if (threadIdx.x == 0) {
        sums[ch] = (float)sum_g;
        sums[c + ch] = (float)(sum_gx * (double)bn_inverse_std(stats[c + ch], eps));
    }
}

// dx = γ·s·(g − mean_g − x̂·mean_gx), the means over the channel's n·hw values from `sums`
// (batch != 0: batch statistics), or γ·s·g (fixed statistics; `sums` is not read).
extern "C" __global__ void bn_input_gradient(const float *x, const float *y, const float *g,
                                             const float *stats, const float *gamma,
                                             const float *sums, float *dx, unsigned int n,
                                             unsigned int c, unsigned int hw, double eps, int relu,
                                             int batch) {
    const unsigned long long total = (unsigned long long)n * c * hw;
    const double count = (double)n * (double)hw;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < total;
         i += (unsigned long long)blockDim.x * gridDim.x) {
        const unsigned int ch = (unsigned int)((i / hw) % c);
        const float s = bn_inverse_std(stats[c + ch], eps);
        const float x_hat = (x[i] - stats[ch]) * s;
        const float gi = (relu && y[i] <= 0.0f) ? 0.0f : g[i];
        float mean_g = 0.0f, mean_gx = 0.0f;
        if (batch) {
            mean_g = (float)((double)sums[ch] / count);
            mean_gx = (float)((double)sums[c + ch] / count);
        }
        dx[i] = gamma[ch] * s * (gi - mean_g - x_hat * mean_gx);
    }
}
