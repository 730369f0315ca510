// nn::DistributedDataParallel: bucketed gradient averaging started from post-accumulate
// hooks during backward (see kern/dist/ddp.hpp).
#include <kern/dist/ddp.hpp>
#include <kern/ops/shape_ops.hpp>

#include <algorithm>

namespace kern::nn {

// One parameter: where its gradient lives in its bucket.
struct DistributedDataParallel::Entry {
  std::string name;
  Tensor param;
  size_t bucket = 0;
  int64_t offset = 0;  // in elements, inside the bucket's flat buffer
  bool ready = false;  // its gradient was copied into the bucket in this backward
};

// Parameters of one dtype packed into one flat buffer (buffer `index` of reduce_), summed
// over the ranks by one ReduceBuffers::start.
struct DistributedDataParallel::Bucket {
  Tensor flat;                  // [sum of numel], the parameters' dtype
  size_t index = 0;             // in reduce_
  std::vector<size_t> entries;  // indices into entries_
  size_t pending = 0;           // entries not ready yet in this backward
};

namespace {
// slot = g / world (1-D slot, g of the same numel): the bits of Tensor::operator/, which
// multiplies by the reciprocal (g * T(1 / world)), in one pass when g is contiguous.
void scaled_copy(Tensor& slot, const Tensor& g, int world) {
  if (g.is_contiguous() && g.dtype() == slot.dtype() && g.numel() == slot.numel() &&
      (g.dtype() == DType::Float32 || g.dtype() == DType::Float64)) {
    auto run = [&]<typename T>() {
      const T* __restrict in = static_cast<const T*>(g.raw_data());
      T* __restrict out = static_cast<T*>(slot.raw_data());
      const T s = static_cast<T>(1.0 / world);
      for (int64_t i = 0, n = g.numel(); i < n; ++i) out[i] = in[i] * s;
    };
    if (g.dtype() == DType::Float64) run.template operator()<double>();
    else run.template operator()<float>();
    slot.bump_version();
    return;
  }
  slot.copy_(reshape(g, {-1}) / static_cast<double>(world));
}

std::string describe_params(const std::vector<std::pair<std::string, Tensor>>& named) {
  std::string s;
  for (auto& [n, t] : named) s += fmt::format("{} {} {}; ", n, t.dtype(), t.shape());
  return s;
}
}  // namespace

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<Module> module,
                                                 const DistributedDataParallelOptions& options)
    : module_(std::move(module)), options_(options) {
  KERN_CHECK(module_ != nullptr, "DistributedDataParallel: the module is null");
  KERN_CHECK(dist::is_initialized(), "DistributedDataParallel: kern::dist is not initialized; create a "
             "kern::dist::Environment first (and run under mpirun)");
  KERN_CHECK(options_.bucket_cap_mb() > 0, "DistributedDataParallel: bucket_cap_mb must be > 0, got ",
             options_.bucket_cap_mb());
  register_module("module", module_);
  train(module_->is_training());
  // Same model everywhere, then rank 0's values everywhere (PyTorch's _sync_module_states).
  dist::check_same_on_all_ranks("DistributedDataParallel: parameters",
                                describe_params(module_->named_parameters()));
  dist::check_same_on_all_ranks("DistributedDataParallel: buffers", describe_params(module_->named_buffers()));
  {
    NoGradGuard ng;
    for (auto& t : module_->parameters()) dist::broadcast(t, 0);
    for (auto& t : module_->buffers()) dist::broadcast(t, 0);
  }
  build_buckets();
  for (size_t i = 0; i < entries_.size(); ++i)
    hook_ids_.push_back(register_post_accumulate_grad_hook(entries_[i]->param,
                                                           [this, i](const Tensor&) { on_grad_ready(i); }));
}

DistributedDataParallel::~DistributedDataParallel() {
  for (auto id : hook_ids_) remove_post_accumulate_grad_hook(id);
}

// Reverse registration order (gradients of the last layers are final first), a new bucket
// per dtype whenever the current one would exceed bucket_cap_mb.
void DistributedDataParallel::build_buckets() {
  auto named = module_->named_parameters();
  std::reverse(named.begin(), named.end());
  const double cap = options_.bucket_cap_mb() * 1024.0 * 1024.0;
  std::vector<std::pair<DType, size_t>> open;  // dtype -> bucket being filled
  std::vector<int64_t> sizes;
  for (auto& [n, p] : named) {
    if (!p.requires_grad()) continue;
    auto e = std::make_unique<Entry>();
    e->name = "module." + n;
    e->param = p;
    auto it = std::find_if(open.begin(), open.end(), [&](auto& o) { return o.first == p.dtype(); });
    const double bytes = static_cast<double>(p.numel() * dtype_size(p.dtype()));
    if (it != open.end() && !buckets_[it->second]->entries.empty() &&
        static_cast<double>(sizes[it->second] * dtype_size(p.dtype())) + bytes > cap) {
      open.erase(it);
      it = open.end();
    }
    if (it == open.end()) {
      buckets_.push_back(std::make_unique<Bucket>());
      sizes.push_back(0);
      open.emplace_back(p.dtype(), buckets_.size() - 1);
      it = open.end() - 1;
    }
    e->bucket = it->second;
    e->offset = sizes[it->second];
    sizes[it->second] += p.numel();
    buckets_[it->second]->entries.push_back(entries_.size());
    entries_.push_back(std::move(e));
  }
  // the flat buffers: in node shared memory when every rank runs on one node (dist.hpp)
  std::vector<std::pair<int64_t, DType>> layout;
  for (size_t b = 0; b < buckets_.size(); ++b) layout.emplace_back(sizes[b], entries_[buckets_[b]->entries[0]]->param.dtype());
  reduce_ = std::make_unique<dist::ReduceBuffers>(layout);
  for (size_t b = 0; b < buckets_.size(); ++b) {
    buckets_[b]->index = b;
    buckets_[b]->flat = reduce_->buffer(b);
  }
}

std::vector<std::vector<std::string>> DistributedDataParallel::bucket_layout() const {
  std::vector<std::vector<std::string>> out;
  for (auto& b : buckets_) {
    out.emplace_back();
    for (size_t i : b->entries) out.back().push_back(entries_[i]->name);
  }
  return out;
}

Tensor DistributedDataParallel::forward(const Tensor& x) {
  if (is_training() && options_.broadcast_buffers()) {
    NoGradGuard ng;
    for (auto& t : module_->buffers()) dist::broadcast(t, 0);
  }
  armed_ = sync_ && is_training() && grad_mode_enabled();
  if (armed_) {
    ready_count_ = 0;
    launched_early_ = 0;
    next_bucket_ = 0;
  }
  if (armed_) {
    reduce_->finish();  // nothing should be pending (a no-op then); never leave a sum behind
    for (auto& b : buckets_) {
      b->pending = b->entries.size();
      for (size_t i : b->entries) entries_[i]->ready = false;
    }
  }
  return (*module_)(x);
}

// Buckets are started in index order only (PyTorch's rule), whatever order the hooks run in
// on each rank: every rank starts the same sums in the same order.
void DistributedDataParallel::launch_ready() {
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_]->pending == 0) {
    if (ready_count_ < entries_.size()) ++launched_early_;
    reduce_->start(buckets_[next_bucket_++]->index);
  }
}

void DistributedDataParallel::on_grad_ready(size_t i) {
  if (!armed_) return;
  if (!callback_queued_) {
    queue_backward_callback([this] { finish_backward(); });
    callback_queued_ = true;
  }
  Entry& e = *entries_[i];
  KERN_CHECK(!e.ready, "DistributedDataParallel: parameter ", e.name, " received a gradient twice after one "
             "forward (a second backward through the same graph?); run forward again before each backward");
  e.ready = true;
  ++ready_count_;
  Bucket& b = *buckets_[e.bucket];
  {
    NoGradGuard ng;
    // PyTorch divides by the world size before the sum: the result is the mean.
    Tensor slot = narrow(b.flat, 0, e.offset, e.param.numel());
    scaled_copy(slot, e.param.grad(), dist::world_size());
  }
  --b.pending;
  // With find_unused_parameters, which buckets fill during backward differs across ranks, and
  // every rank first all-reduces the used map (finish_backward): the sums start there, in
  // order. (A sum started here could wait in its barrier for a rank that is in that
  // all-reduce; over MPI the collectives would run in different orders on the ranks.)
  if (!options_.find_unused_parameters()) launch_ready();
  reduce_->progress();  // let MPI progress what is in flight
}

void DistributedDataParallel::finish_backward() {
  callback_queued_ = false;
  if (!armed_) return;
  armed_ = false;
  std::vector<size_t> unused;
  for (size_t i = 0; i < entries_.size(); ++i)
    if (!entries_[i]->ready) unused.push_back(i);
  if (!unused.empty() && !options_.find_unused_parameters()) {
    // No wait on the launched buckets: another rank may not have launched the same ones.
    // The job ends through dist::run_or_abort (or the user catches this and stops).
    std::string names;
    for (size_t i : unused) names += (names.empty() ? "" : ", ") + entries_[i]->name;
    throw Error(fmt::format(
        "DistributedDataParallel: rank {}: parameters that received no gradient in this backward: {}. Every "
        "parameter must take part in the loss, or pass DistributedDataParallelOptions().find_unused_parameters("
        "true)",
        dist::rank(), names));
  }
  Tensor used_anywhere;
  if (options_.find_unused_parameters()) {
    // Which parameters some rank used (PyTorch's local_used_map), on every rank (including
    // those that used all of them): the others keep .grad undefined.
    NoGradGuard ng;
    used_anywhere = ones({static_cast<int64_t>(entries_.size())}, DType::Int64);
    for (size_t i : unused) used_anywhere.narrow(0, static_cast<int64_t>(i), 1).fill_(0);
    dist::all_reduce(used_anywhere);
    for (size_t i : unused) {
      Entry& e = *entries_[i];
      Bucket& b = *buckets_[e.bucket];
      narrow(b.flat, 0, e.offset, e.param.numel()).fill_(0.0);
      --b.pending;
    }
  }
  launch_ready();  // the buckets not started yet (all of them with find_unused_parameters)
  NoGradGuard ng;
  std::vector<int64_t> used = used_anywhere.defined() ? used_anywhere.to_vector<int64_t>() : std::vector<int64_t>{};
  reduce_->finish();
  for (auto& b : buckets_) {
    for (size_t i : b->entries) {
      Entry& e = *entries_[i];
      if (!used.empty() && used[i] == 0) continue;
      Tensor avg = reshape(narrow(b->flat, 0, e.offset, e.param.numel()), e.param.shape());
      Tensor g = e.param.grad();
      if (options_.gradient_as_bucket_view()) e.param.set_grad(avg);
      else if (g.defined()) g.copy_(avg);
      else e.param.set_grad(avg.clone());
    }
  }
}

}  // namespace kern::nn
