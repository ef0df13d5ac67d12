// A private redis-server for a test (tests/support): its own port (a free one) and directory, AOF
// on with fsync at every write (a SIGKILL loses nothing the server acknowledged), started and
// killed by the test, restartable on the same port and data. Skips (or, with
// MOBULA_REQUIRE_REDIS=1 as `./dev.sh test` sets, fails) when redis-server is not installed.
#pragma once

#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace mobula::testing {

class RedisServer {
 public:
  explicit RedisServer(std::filesystem::path dir) : dir_(std::move(dir)) {}
  ~RedisServer() { stop(SIGKILL); }

  static std::string binary() {
    for (const char* p : {"/usr/bin/redis-server", "/usr/local/bin/redis-server"})
      if (std::filesystem::exists(p)) return p;
    return "";
  }
  static bool required() {
    const char* r = std::getenv("MOBULA_REQUIRE_REDIS");
    return r && std::string(r) == "1";
  }

  // Starts the server (on the port of the last start, else a free one) and waits until it answers.
  bool start() {
    if (port_ == 0) port_ = free_port();
    std::filesystem::create_directories(dir_);
    const std::string bin = binary();
    if (bin.empty()) return false;
    std::vector<std::string> args = {bin,
                                     "--port",
                                     std::to_string(port_),
                                     "--bind",
                                     "127.0.0.1",
                                     "--dir",
                                     dir_.string(),
                                     "--appendonly",
                                     "yes",
                                     "--appendfsync",
                                     "always",
                                     "--save",
                                     "",
                                     "--daemonize",
                                     "no",
                                     "--logfile",
                                     (dir_ / "redis.log").string()};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, bin.c_str(), nullptr, nullptr, argv.data(), environ) != 0) return false;
    for (int i = 0; i < 200; ++i) {  // up to 10 s
      if (answers()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  // Ends the server with `sig` (SIGKILL: a crash; SIGTERM: a clean stop) and reaps it.
  void stop(int sig) {
    if (pid_ <= 0) return;
    ::kill(pid_, sig);
    int st = 0;
    ::waitpid(pid_, &st, 0);
    pid_ = 0;
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }

 private:
  static int free_port() {
    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t n = sizeof a;
    ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
    ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &n);
    const int port = ntohs(a.sin_port);
    ::close(s);
    return port;
  }
  bool answers() const {
    const int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port_));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    if (ok) {
      const char ping[] = "PING\r\n";
      char buf[16] = {0};
      ok = ::write(s, ping, sizeof ping - 1) == ssize_t(sizeof ping - 1) && ::read(s, buf, sizeof buf) > 0 &&
           std::string(buf).rfind("+PONG", 0) == 0;
    }
    ::close(s);
    return ok;
  }
  std::filesystem::path dir_;
  int port_ = 0;
  pid_t pid_ = 0;
};

}  // namespace mobula::testing
