#pragma once
// Real FFTs along the last dim. kern has no complex dtype: a complex spectrum is a real
// tensor with a trailing dim of 2 (real, imaginary).
#include <kern/tensor.hpp>

namespace kern {

/// x: [..., L] -> [..., n/2 + 1, 2]; x is zero-padded (or truncated) to length n
/// (n = 0 means L). Unnormalized forward transform, like torch.fft.rfft.
Tensor rfft(const Tensor& x, int64_t n = 0);
/// X: [..., n/2 + 1, 2] -> [..., n]; the inverse with 1/n scaling, like torch.fft.irfft.
Tensor irfft(const Tensor& X, int64_t n);
/// Complex product of two [..., 2] tensors (broadcasting).
Tensor complex_mul(const Tensor& a, const Tensor& b);

}  // namespace kern
