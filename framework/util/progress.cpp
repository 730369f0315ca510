// Progress bar drawing (see kern/progress.hpp).
#include <kern/progress.hpp>

#include <unistd.h>

#include <cmath>

namespace kern {

namespace {
std::string format_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}:{:02d}:{:02d}", t / 3600, (t / 60) % 60, t % 60);
  return fmt::format("{:02d}:{:02d}", t / 60, t % 60);
}
}  // namespace

ProgressBar::ProgressBar(int64_t total, std::string label, std::FILE* out)
    : total_(total), label_(std::move(label)), out_(out), interactive_(isatty(fileno(out)) != 0) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
  next_plain_ = total_ > 0 ? std::max<int64_t>(1, total_ / 10) : 100;
}

ProgressBar::ProgressBar(ProgressBar&& o) noexcept
    : total_(o.total_), label_(std::move(o.label_)), out_(o.out_), interactive_(o.interactive_),
      finished_(o.finished_), done_(o.done_), next_plain_(o.next_plain_), postfix_(std::move(o.postfix_)),
      start_(o.start_), last_draw_(o.last_draw_) {
  o.finished_ = true;
}

ProgressBar::~ProgressBar() { finish(); }

void ProgressBar::set_postfix(const std::string& name, double value) {
  for (auto& [n, v] : postfix_)
    if (n == name) {
      v = value;
      return;
    }
  postfix_.emplace_back(name, value);
}

std::string ProgressBar::line() const {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? done_ / elapsed : 0.0;
  std::string s = label_.empty() ? "" : label_ + " ";
  if (total_ > 0) {
    const int width = 24;
    const double frac = std::min(1.0, static_cast<double>(done_) / total_);
    const int filled = static_cast<int>(frac * width);
    s += "[" + std::string(filled, '#') + std::string(width - filled, '.') + "] ";
    s += fmt::format("{}/{} ({:3.0f}%)", done_, total_, 100 * frac);
  } else {
    s += fmt::format("{}", done_);
  }
  s += fmt::format(" {:.1f} it/s", rate);
  if (total_ > 0 && rate > 0) s += " eta " + format_duration((total_ - done_) / rate);
  s += " elapsed " + format_duration(elapsed);
  for (auto& [n, v] : postfix_) s += fmt::format(" {}={:.4g}", n, v);
  return s;
}

void ProgressBar::draw(bool final_line) {
  if (interactive_) {
    fmt::print(out_, "\r{}\x1b[K{}", line(), final_line ? "\n" : "");
  } else {
    fmt::print(out_, "{}\n", line());
  }
  std::fflush(out_);
  last_draw_ = std::chrono::steady_clock::now();
}

void ProgressBar::advance(int64_t n) {
  done_ += n;
  if (interactive_) {
    if (std::chrono::steady_clock::now() - last_draw_ > std::chrono::milliseconds(100)) draw(false);
  } else if (done_ >= next_plain_ && (total_ == 0 || done_ < total_)) {
    draw(false);
    next_plain_ += total_ > 0 ? std::max<int64_t>(1, total_ / 10) : 100;
  }
}

void ProgressBar::finish() {
  if (finished_) return;
  finished_ = true;
  draw(true);
}

}  // namespace kern
