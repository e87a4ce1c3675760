// The verify check's CUDA program: add two vectors on GPU 0 and compare with the host's sums.
// Prints "PASS <device name> cc=<major>.<minor>" and exits 0, or "FAIL <reason>" and exits 1.
#include <cstdio>
#include <cuda_runtime.h>

__global__ void add(const float *a, const float *b, float *c, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}

int main() {
    const int n = 1 << 20;
    cudaDeviceProp prop;
    cudaError_t err = cudaGetDeviceProperties(&prop, 0);
    if (err != cudaSuccess) { printf("FAIL %s\n", cudaGetErrorString(err)); return 1; }
    float *a, *b, *c;
    if (cudaMallocManaged(&a, n * sizeof(float)) != cudaSuccess || cudaMallocManaged(&b, n * sizeof(float)) != cudaSuccess ||
        cudaMallocManaged(&c, n * sizeof(float)) != cudaSuccess) {
        printf("FAIL cudaMallocManaged\n");
        return 1;
    }
    for (int i = 0; i < n; i++) { a[i] = (float)i; b[i] = 2.0f * (float)i; }
    add<<<(n + 255) / 256, 256>>>(a, b, c, n);
    err = cudaDeviceSynchronize();
    if (err != cudaSuccess) { printf("FAIL %s\n", cudaGetErrorString(err)); return 1; }
    int bad = 0;
    for (int i = 0; i < n; i++) if (c[i] != 3.0f * (float)i) bad++;
    if (bad) { printf("FAIL %d wrong sums\n", bad); return 1; }
    printf("PASS %s cc=%d.%d\n", prop.name, prop.major, prop.minor);
    return 0;
}
