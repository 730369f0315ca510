// libFuzzer target: the IDX reader (plain or gzip, through zlib). A read either throws
// kern::Error or returns a tensor that holds exactly the data the header declares, and that
// survives being indexed and reduced (an IDX header whose sizes overflowed once returned a
// tensor of numel 0 whose first row crashed).
#include <kern/data/idx.hpp>
#include <kern/kern.hpp>

#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const kern::fuzz::MemFile file(data, size);
  kern::Tensor t;
  try {
    t = kern::data::read_idx(file.path());
  } catch (const kern::Error&) {
    return 0;
  }
  if (t.dim() != 1 && t.dim() != 3) kern::fuzz::invariant_failed("IDX tensor is not 1-d or 3-d");
  const bool labels = t.dim() == 1;
  if (t.dtype() != (labels ? kern::DType::Int64 : kern::DType::Float32))
    kern::fuzz::invariant_failed("IDX tensor has the wrong dtype");
  const double total = t.to(kern::DType::Float64).sum().item();
  if (!(total >= 0.0 && total <= 255.0 * static_cast<double>(t.numel())))
    kern::fuzz::invariant_failed("IDX values are not bytes");
  if (t.size(0) > 0) {
    (void)t.select(0, 0).to(kern::DType::Float64).sum().item();
    (void)t.select(0, t.size(0) - 1).contiguous();
  }
  return 0;
}
