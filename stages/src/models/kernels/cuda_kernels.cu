// The pipeline's own CUDA kernels (stages/src/models/kernels/cuda.rs compiles this file with
// NVRTC the first time one is needed). Each mirrors a CPU implementation in the same folder
// and computes the same values: dropout.rs (dropout_f32) and top_fraction.rs
// (top_fraction_mask).

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
