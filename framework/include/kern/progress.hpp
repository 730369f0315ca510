#pragma once
// A console progress bar for training loops: batches done, throughput, ETA and named values
// (e.g. the loss). On a terminal it redraws one line (at most 10 times a second); when stdout
// is not a terminal (logs, CI) it prints a plain line every 10% of the work instead.
//
//   auto bar = kern::progress(loader, "epoch {}", epoch);
//   for (auto& batch : bar) { ...; bar.set_postfix("loss", loss.item()); }
#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <string>
#include <utility>
#include <vector>

namespace kern {

class ProgressBar {
 public:
  /// total = number of steps (0 if unknown). `out` defaults to stdout.
  ProgressBar(int64_t total, std::string label, std::FILE* out = stdout);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;
  ProgressBar(ProgressBar&&) noexcept;

  /// Marks `n` more steps done and redraws when due.
  void advance(int64_t n = 1);
  /// Shows `name=value` after the bar (replaces a previous value of that name).
  void set_postfix(const std::string& name, double value);
  /// Prints the final state on its own line (called by the destructor if not before).
  void finish();
  /// Forces terminal (true) or plain-line (false) output, e.g. for tests.
  void set_interactive(bool interactive) { interactive_ = interactive; }
  int64_t done() const { return done_; }
  /// The text of the current status line (without control characters).
  std::string line() const;

 private:
  void draw(bool final_line);
  int64_t total_;
  std::string label_;
  std::FILE* out_;
  bool interactive_;
  bool finished_ = false;
  int64_t done_ = 0;
  int64_t next_plain_ = 0;
  std::vector<std::pair<std::string, double>> postfix_;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

/// Wraps any range with begin()/end() (and size() when it has one) in a progress bar.
template <typename Range>
class ProgressRange {
 public:
  ProgressRange(Range& range, std::string label) : range_(range), bar_(size_of(range), std::move(label)) {}

  using InnerEnd = decltype(std::end(std::declval<Range&>()));
  /// End marker: wraps the range's own end (which may be a sentinel type).
  struct sentinel {
    InnerEnd inner;
  };

  class iterator {
   public:
    using Inner = decltype(std::begin(std::declval<Range&>()));
    iterator(Inner it, ProgressRange* owner) : it_(std::move(it)), owner_(owner) {}
    decltype(auto) operator*() { return *it_; }
    iterator& operator++() {
      ++it_;
      owner_->bar_.advance();
      return *this;
    }
    bool operator!=(const sentinel& end) const { return !(it_ == end.inner); }

   private:
    Inner it_;
    ProgressRange* owner_;
  };

  iterator begin() { return iterator(std::begin(range_), this); }
  sentinel end() { return sentinel{std::end(range_)}; }
  void set_postfix(const std::string& name, double value) { bar_.set_postfix(name, value); }
  ProgressBar& bar() { return bar_; }

 private:
  template <typename R>
  static int64_t size_of(R& r) {
    if constexpr (requires { r.size(); }) return static_cast<int64_t>(r.size());
    else return 0;
  }
  Range& range_;
  ProgressBar bar_;
};

template <typename Range, typename... Args>
ProgressRange<Range> progress(Range& range, fmt::format_string<Args...> label, Args&&... args) {
  return ProgressRange<Range>(range, fmt::format(label, std::forward<Args>(args)...));
}

}  // namespace kern
