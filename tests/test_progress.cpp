// Progress bar: plain-line mode prints ~10 lines with counts, postfix values and a final line.
#include <kern/progress.hpp>

#include <catch2/catch.hpp>

#include <cstdio>
#include <string>
#include <vector>

TEST_CASE("progress bar prints periodic plain lines when not on a terminal", "[progress]") {
  std::FILE* f = std::tmpfile();
  REQUIRE(f != nullptr);
  {
    kern::ProgressBar bar(50, "epoch 1", f);
    bar.set_interactive(false);
    for (int i = 0; i < 50; ++i) {
      bar.set_postfix("loss", 1.0 / (i + 1));
      bar.advance();
    }
    REQUIRE(bar.done() == 50);
  }
  std::rewind(f);
  std::string text;
  char buf[512];
  while (std::fgets(buf, sizeof buf, f)) text += buf;
  std::fclose(f);
  int lines = 0;
  for (char c : text) lines += c == '\n';
  REQUIRE(lines >= 9);
  REQUIRE(lines <= 11);
  REQUIRE(text.find("epoch 1") != std::string::npos);
  REQUIRE(text.find("50/50 (100%)") != std::string::npos);
  REQUIRE(text.find("loss=0.02") != std::string::npos);
  REQUIRE(text.find('\r') == std::string::npos);
}

TEST_CASE("progress() wraps a range and counts its steps", "[progress]") {
  std::vector<int> items(7, 1);
  int sum = 0;
  {
    auto bar = kern::progress(items, "items {}", 3);
    bar.bar().set_interactive(false);
    for (int v : bar) sum += v;
    REQUIRE(bar.bar().done() == 7);
    REQUIRE(bar.bar().line().find("items 3") != std::string::npos);
  }
  REQUIRE(sum == 7);
}
