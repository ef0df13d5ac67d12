#include "core/health/health.h"

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>

#include "core/metrics/events.h"
#include "core/runtime/log.h"

namespace mobula::health {

namespace {

volatile std::sig_atomic_t g_stop = 0;

extern "C" void on_stop_signal(int sig) {
  g_stop = sig;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void install_stop_handlers() {
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  for (int sig : {SIGTERM, SIGUSR1, SIGUSR2}) sigaction(sig, &sa, nullptr);
}

int stop_signal() {
  return static_cast<int>(g_stop);
}

void request_stop(int sig) {
  g_stop = sig;
}

Watchdog::Watchdog(double timeout_s, std::string who) : timeout_s_(timeout_s), who_(std::move(who)) {
  last_ns_ = now_ns();
  if (timeout_s_ > 0) thread_ = std::thread([this] { run(); });
}

Watchdog::~Watchdog() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Watchdog::beat(const char* phase, int64_t step) {
  phase_.store(phase, std::memory_order_relaxed);
  step_.store(step, std::memory_order_relaxed);
  last_ns_.store(now_ns(), std::memory_order_release);
}

void Watchdog::run() {
  std::unique_lock<std::mutex> lk(mu_);
  const auto poll =
      std::chrono::milliseconds(std::min<int64_t>(1000, std::max<int64_t>(50, int64_t(timeout_s_ * 100))));
  while (!cv_.wait_for(lk, poll, [&] { return stop_; })) {
    const double idle = double(now_ns() - last_ns_.load(std::memory_order_acquire)) * 1e-9;
    if (idle < timeout_s_) continue;
    const int64_t step = step_.load();
    spdlog::error(
        "watchdog: {} made no progress for {:.0f} s (fault.hang_timeout_s = {:.0f}); stuck in '{}'{}; ending the job "
        "(exit {}) so that it restarts from its newest checkpoint",
        who_, idle, timeout_s_, phase_.load(), step >= 0 ? " at step " + std::to_string(step) : std::string(),
        kHangExitCode);
    if (!events_dir_.empty())
      events::emit(events_dir_, "watchdog",
                   {{"phase", events::str(phase_.load())},
                    {"step", events::num(step)},
                    {"idle_s", events::num(idle)},
                    {"who", events::str(who_)}},
                   rank_);
    spdlog::shutdown();
    std::fflush(nullptr);
    std::_Exit(kHangExitCode);
  }
}

}  // namespace mobula::health
