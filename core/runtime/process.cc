#include "core/runtime/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>

extern char** environ;

namespace mobula {

std::string join_command(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) {
    if (!out.empty()) out += ' ';
    if (!a.empty() && a.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./=:,+-@%") ==
                          std::string::npos) {
      out += a;
    } else {
      out += '\'';
      for (char c : a) out += (c == '\'') ? std::string("'\\''") : std::string(1, c);
      out += '\'';
    }
  }
  return out;
}

namespace {

std::vector<char*> cargv(const std::vector<std::string>& v) {
  std::vector<char*> out;
  for (const auto& s : v) out.push_back(const_cast<char*>(s.c_str()));
  out.push_back(nullptr);
  return out;
}

int decode(int wstatus) {
  if (WIFEXITED(wstatus)) return WEXITSTATUS(wstatus);
  if (WIFSIGNALED(wstatus)) return 128 + WTERMSIG(wstatus);
  return 1;
}

volatile sig_atomic_t g_child = 0;
volatile sig_atomic_t g_forwarded = 0;
void forward(int sig) {
  g_forwarded = sig;
  if (g_child > 0) kill(static_cast<pid_t>(g_child), sig);
}

}  // namespace

int forwarded_signal() {
  return static_cast<int>(g_forwarded);
}

Result<ProcessResult> run_capture(const std::vector<std::string>& argv, double timeout_s) {
  if (argv.empty()) return Status::invalid_argument("run_capture: empty command");
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0 || pipe2(err_pipe, O_CLOEXEC) != 0)
    return Status::external("pipe2: " + std::string(std::strerror(errno)));
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err_pipe[1], 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  pid_t pid = 0;
  auto args = cargv(argv);
  const int rc = posix_spawnp(&pid, args[0], &fa, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (rc != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return Status::external("cannot start '" + join_command(argv) + "': " + std::strerror(rc));
  }
  ProcessResult res;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
  pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
  int open_fds = 2;
  bool timed_out = false;
  char buf[4096];
  while (open_fds > 0) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    const int n = poll(fds, 2, static_cast<int>(std::min<long long>(left, 1000)));
    if (n < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t got = read(fds[i].fd, buf, sizeof buf);
      if (got > 0) {
        (i == 0 ? res.out : res.err).append(buf, static_cast<size_t>(got));
      } else if (got == 0 || errno != EINTR) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
      }
    }
  }
  for (auto& f : fds)
    if (f.fd >= 0) close(f.fd);
  if (timed_out) kill(pid, SIGKILL);
  int ws = 0;
  while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
  }
  if (timed_out)
    return Status::timeout("'" + join_command(argv) + "' did not finish within " + std::to_string(timeout_s) + " s");
  res.exit_code = decode(ws);
  return res;
}

Result<int> run_inherit(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env) {
  return run_inherit_watched(argv, extra_env, Watch{});
}

Result<int> run_inherit_watched(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
                                const Watch& watch) {
  if (argv.empty()) return Status::invalid_argument("run_inherit: empty command");
  if (watch.killed) *watch.killed = false;
  std::vector<std::string> env;
  for (char** e = environ; *e; ++e) {
    const std::string kv(*e);
    const auto name = kv.substr(0, kv.find('='));
    bool replaced = false;
    for (const auto& x : extra_env) replaced |= x.substr(0, x.find('=')) == name;
    if (!replaced) env.push_back(kv);
  }
  for (const auto& x : extra_env) env.push_back(x);
  auto args = cargv(argv);
  auto envp = cargv(env);
  struct sigaction sa {
  }, old_int{}, old_term{}, old_usr1{};
  sa.sa_handler = forward;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  sigaction(SIGUSR1, &sa, &old_usr1);
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, args[0], nullptr, nullptr, args.data(), envp.data());
  Result<int> out = Status::external("unreachable");
  if (rc != 0) {
    out = Status::external("cannot start '" + join_command(argv) + "': " + std::strerror(rc));
  } else {
    g_child = pid;
    int ws = 0;
    if (!watch.should_kill) {
      while (waitpid(pid, &ws, 0) < 0 && errno == EINTR) {
      }
    } else {
      using clock = std::chrono::steady_clock;
      const auto poll = std::chrono::duration<double>(watch.poll_s);
      auto next = clock::now() + poll;
      std::optional<clock::time_point> kill_at;
      bool terminated = false;
      for (;;) {
        const pid_t w = waitpid(pid, &ws, WNOHANG);
        if (w == pid || (w < 0 && errno != EINTR)) break;
        if (kill_at && clock::now() >= *kill_at) {
          kill(pid, SIGKILL);
          kill_at.reset();
        }
        if (!terminated && clock::now() >= next) {
          next = clock::now() + poll;
          if (watch.should_kill()) {
            terminated = true;
            if (watch.killed) *watch.killed = true;
            kill(pid, SIGTERM);
            kill_at = clock::now() +
                      std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(watch.kill_grace_s));
          }
        }
        usleep(50 * 1000);
      }
    }
    g_child = 0;
    out = decode(ws);
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  sigaction(SIGUSR1, &old_usr1, nullptr);
  return out;
}

}  // namespace mobula
