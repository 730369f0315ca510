#pragma once
// Real FFTs along the last dim. kern has no complex dtype: a complex spectrum is a real
// tensor with a trailing dim of 2 (real, imaginary).
#include <kern/tensor.hpp>

namespace kern {

/// x: [..., L] -> [..., n/2 + 1, 2]; x is zero-padded (or truncated) to length n
/// (n = 0 means L). Unnormalized forward transform, like torch.fft.rfft.
Tensor rfft(const Tensor& x, int64_t n = 0);
/// X: [..., bins, 2] -> [..., n]; the inverse with 1/n scaling, like torch.fft.irfft: the
/// bins are zero-padded / truncated to n/2 + 1, and the imaginary parts of bin 0 and (even
/// n) bin n/2 are ignored. rfft and irfft are each other's backward, so any order of
/// derivative is exact. Any n >= 1 works (radix-2 for powers of two, Bluestein otherwise).
Tensor irfft(const Tensor& X, int64_t n);
/// Complex product of two [..., 2] tensors (broadcasting).
Tensor complex_mul(const Tensor& a, const Tensor& b);

}  // namespace kern
