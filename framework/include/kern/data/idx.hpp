#pragma once
// IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or plain.
//
// Layout: 4-byte magic {0, 0, type, ndim}, ndim big-endian u32 sizes, then the data in
// row-major order. Only unsigned-byte data (type 0x08) is supported:
//   0x00000801  labels  -> int64   [N]
//   0x00000803  images  -> float32 [N, rows, cols], values 0..255 (not rescaled)
// Every problem (missing file, bad magic, truncated data, trailing bytes) throws kern::Error
// naming the file. Memory grows with the data actually read, so a corrupt header claiming
// billions of items cannot trigger a huge allocation.
#include <kern/tensor.hpp>

#include <string>

namespace kern::data {

Tensor read_idx(const std::string& path);

}  // namespace kern::data
