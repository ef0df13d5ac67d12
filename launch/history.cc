#include "launch/history.h"

#include "core/runtime/time_format.h"

#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "core/runtime/files.h"
#include "launch/commands.h"
#include "slurm/jobs.h"

namespace mobula::launch {

namespace fs = std::filesystem;

namespace {

std::string event_name(const nlohmann::json& e) {
  return e.is_object() && e.contains("event") && e["event"].is_string() ? e["event"].get<std::string>() : "";
}

}  // namespace

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string job_status(const JobRecord& rec, const JobView& view, bool ask_slurm) {
  for (auto it = view.events.rbegin(); it != view.events.rend(); ++it) {
    if (event_name(*it) != "job_end") continue;
    const std::string outcome = it->value("outcome", "");
    if (outcome == "completed") return "COMPLETED";
    if (outcome == "preempted") return "PREEMPTED";
    return outcome.empty() ? "FAILED" : "FAILED (" + outcome + ")";
  }
  if (!rec.local()) {
    if (!ask_slurm) return "UNKNOWN";
    if (auto j = slurm::show_job(rec.id); j.is_ok()) return j->state;
    return "UNKNOWN";  // slurmctld forgot it and it wrote no job_end (cancelled, node lost, ...)
  }
  char host[256] = {0};
  if (rec.pid > 0 && gethostname(host, sizeof host - 1) == 0 && rec.host == host)
    return kill(static_cast<pid_t>(rec.pid), 0) == 0 || errno == EPERM ? "RUNNING" : "DIED";
  return "UNKNOWN";  // launched on another host, no job_end (yet)
}

JobSummary summarize(const JobRecord& rec, const JobView& view, bool ask_slurm) {
  JobSummary s;
  s.status = job_status(rec, view, ask_slurm);
  std::set<long long> attempts;
  double first = std::nan(""), last = std::nan("");
  for (const auto& e : view.events) {
    const double t = parse_utc(e.value("time", "")).value_or(std::nan(""));
    if (std::isnan(first) && !std::isnan(t)) first = t;
    if (!std::isnan(t)) last = t;
    if (event_name(e) == "attempt_start" && e.contains("attempt") && e["attempt"].is_number())
      attempts.insert(e["attempt"].get<long long>());
  }
  s.attempts = static_cast<int>(attempts.size());
  s.started = "-";
  if (!view.events.empty()) s.started = view.events.front().value("time", "-").substr(0, 19);
  if (s.status == "RUNNING" && !std::isnan(first)) last = static_cast<double>(std::time(nullptr));
  if (!std::isnan(first) && !std::isnan(last)) s.duration_s = last - first;
  s.headline = "-";
  for (const auto& m : view.metrics) {
    if (!m.is_object() || !m.contains("step") || !m["step"].is_number()) continue;
    s.last_step = std::max(s.last_step, m["step"].get<long long>());
    if (m.contains("accuracy") && m["accuracy"].is_number()) {
      char buf[32];
      std::snprintf(buf, sizeof buf, "acc %.2f", m["accuracy"].get<double>());
      s.headline = buf;
    }
  }
  if (view.summary.is_object() && view.summary.contains("final_accuracy") &&
      view.summary["final_accuracy"].is_number()) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "held-out acc %.2f", view.summary["final_accuracy"].get<double>());
    s.headline = buf;
  }
  return s;
}

Result<JobRecord> resolve_job(const std::string& key) {
  std::error_code ec;
  if (fs::is_directory(key, ec)) {
    JobRecord r;
    r.workdir = fs::absolute(key, ec).lexically_normal().string();
    r.launcher = "local";
    r.name = fs::path(r.workdir).filename().string();
    return r;
  }
  return find_job(key);
}

Result<JobView> load_job(const JobRecord& rec, bool ask_slurm) {
  auto v = load_job_view(rec.workdir);
  if (!v) return v.status();
  v->id = rec.local() ? "" : rec.id;
  v->status = job_status(rec, *v, ask_slurm);
  return v;
}

int cmd_history(bool ask_slurm) {
  auto all = list_jobs();
  if (!all) {
    std::fprintf(stderr, "mobula history: %s\n", all.status().message().c_str());
    return 1;
  }
  std::printf("%-24s %-30s %-12s %8s  %-19s %9s %7s  %s\n", "NAME", "ID", "STATUS", "ATTEMPTS", "STARTED", "DURATION",
              "STEP", "HEADLINE");
  for (const auto& r : *all) {
    auto v = load_job_view(r.workdir);
    JobSummary s;
    if (v) {
      s = summarize(r, *v, ask_slurm);
    } else {
      s.status = "NO WORKDIR";
      s.started = "-";
      s.headline = "-";
    }
    const std::string step = s.last_step >= 0 ? std::to_string(s.last_step) : "-";
    std::printf("%-24s %-30s %-12s %8d  %-19s %9s %7s  %s\n", r.name.c_str(), r.id.c_str(), s.status.c_str(),
                s.attempts, s.started.c_str(), format_duration(s.duration_s).c_str(), step.c_str(), s.headline.c_str());
  }
  if (all->empty()) std::printf("(no jobs in %s/jobs)\n", registry_root().c_str());
  return 0;
}

int cmd_show(const std::string& key, int nevents) {
  auto r = resolve_job(key);
  if (!r) {
    std::fprintf(stderr, "mobula show: %s (or give the job's work dir)\n", r.status().message().c_str());
    return 2;
  }
  auto v = load_job(*r, true);
  if (!v) {
    std::fprintf(stderr, "mobula show: %s\n", v.status().message().c_str());
    return 1;
  }
  const JobSummary s = summarize(*r, *v, true);
  std::printf("job       %s%s\n", v->name.c_str(), r->id.empty() ? "" : (" (" + r->id + ")").c_str());
  std::printf("status    %s\n", s.status.c_str());
  std::printf("work dir  %s\n", r->workdir.c_str());
  if (!r->spec.empty()) std::printf("spec      %s\n", r->spec.c_str());
  std::printf("started   %s, duration %s, %d attempt(s), last step %s\n", s.started.c_str(),
              format_duration(s.duration_s).c_str(), s.attempts,
              s.last_step >= 0 ? std::to_string(s.last_step).c_str() : "-");
  std::printf("headline  %s\n", s.headline.c_str());
  // Attempts: start, end, outcome.
  for (const auto& e : v->events) {
    const std::string n = event_name(e);
    if (n == "attempt_end")
      std::printf("  attempt %lld ended %s: %s (exit %lld)\n", e.value("attempt", 0LL), e.value("time", "?").c_str(),
                  e.value("outcome", "?").c_str(), e.value("exit_code", -1LL));
  }
  // Layout of the newest attempt: rank, role, host.
  for (auto it = v->events.rbegin(); it != v->events.rend(); ++it) {
    if (event_name(*it) != "job_start") continue;
    const auto hosts = it->value("hosts", std::vector<std::string>{});
    const auto roles = it->value("roles", std::vector<std::string>{});
    std::printf("layout    %zu rank(s), spec hash %s, mobula %s\n", hosts.size(), it->value("spec_hash", "?").c_str(),
                it->value("mobula_version", "?").c_str());
    for (size_t i = 0; i < hosts.size(); ++i)
      std::printf("  rank %-4zu %-10s %s\n", i, i < roles.size() ? roles[i].c_str() : "?", hosts[i].c_str());
    break;
  }
  const std::string latest = slurp(r->workdir + "/checkpoints/latest");
  std::printf("checkpoint %s\n", latest.empty() ? "-" : latest.substr(0, latest.find('\n')).c_str());
  const size_t n = v->events.size(), from = n > static_cast<size_t>(nevents) ? n - static_cast<size_t>(nevents) : 0;
  std::printf("events    %zu in events.jsonl%s\n", n, from ? (", the last " + std::to_string(n - from)).c_str() : "");
  for (size_t i = from; i < n; ++i) std::printf("  %s\n", v->events[i].dump().c_str());
  if (v->skipped_lines) std::printf("(%d malformed line(s) skipped)\n", v->skipped_lines);
  return 0;
}

int cmd_report(const std::string& key, const std::string& out) {
  auto r = resolve_job(key);
  if (!r) {
    std::fprintf(stderr, "mobula report: %s (or give the job's work dir)\n", r.status().message().c_str());
    return 2;
  }
  auto v = load_job(*r, true);
  if (!v) {
    std::fprintf(stderr, "mobula report: %s\n", v.status().message().c_str());
    return 1;
  }
  const std::string page = render_report(*v);
  std::error_code ec;
  if (const fs::path parent = fs::path(out).parent_path(); !parent.empty()) fs::create_directories(parent, ec);
  if (Status st = write_file_atomically(out, page); !st.is_ok()) {
    std::fprintf(stderr, "mobula report: %s\n", st.message().c_str());
    return 1;
  }
  std::printf("wrote %s (%zu bytes; %zu events, %zu metric lines)\n", out.c_str(), page.size(), v->events.size(),
              v->metrics.size());
  return 0;
}

int serve_history(const std::string& address, int port) {
  // SIGINT/SIGTERM are taken by sigwait below: block them before the server's threads exist.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  if (int rc = pthread_sigmask(SIG_BLOCK, &stop, nullptr); rc != 0) {
    std::fprintf(stderr, "mobula history serve: pthread_sigmask: %s\n", std::strerror(rc));
    return 1;
  }
  httplib::Server svr;
  // Only registry ids; never a path from the URL.
  const std::regex id_re("^[A-Za-z0-9_-][A-Za-z0-9._-]*$");
  auto lookup = [&](const std::string& id, httplib::Response& res) -> std::optional<JobRecord> {
    if (!std::regex_match(id, id_re)) {
      res.status = 404;
      res.set_content("no such job\n", "text/plain");
      return std::nullopt;
    }
    auto all = list_jobs();
    if (all)
      for (const auto& r : *all)
        if (r.id == id) return r;
    res.status = 404;
    res.set_content("no such job\n", "text/plain");
    return std::nullopt;
  };
  svr.Get("/", [&](const httplib::Request&, httplib::Response& res) {
    auto all = list_jobs();
    std::string page =
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>mobula history</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}th{background:#f4f4f4}"
        "</style></head><body><h1>mobula history</h1><p>Registry: " +
        html_escape(registry_root()) +
        "/jobs</p><table><tr><th>name</th><th>id</th><th>status</th><th>attempts</th>"
        "<th>started</th><th>duration</th><th>step</th><th>headline</th><th></th></tr>";
    if (all) {
      for (auto it = all->rbegin(); it != all->rend(); ++it) {
        auto v = load_job_view(it->workdir);
        JobSummary s;
        if (v) s = summarize(*it, *v, false);
        const std::string id = html_escape(it->id);
        page += "<tr><td>" + html_escape(it->name) + "</td><td>" + id + "</td><td>" + html_escape(s.status) +
                "</td><td>" + std::to_string(s.attempts) + "</td><td>" + html_escape(s.started) + "</td><td>" +
                format_duration(s.duration_s) + "</td><td>" + (s.last_step >= 0 ? std::to_string(s.last_step) : "-") +
                "</td><td>" + html_escape(s.headline) + "</td><td><a href=\"/jobs/" + id +
                "/report\">report</a> <a href=\"/jobs/" + id + "/events.jsonl\">events</a></td></tr>";
      }
    }
    page += "</table></body></html>";
    res.set_content(page, "text/html; charset=utf-8");
  });
  svr.Get(R"(/jobs/([^/]+)/report)", [&](const httplib::Request& req, httplib::Response& res) {
    auto rec = lookup(req.matches[1], res);
    if (!rec) return;
    auto v = load_job(*rec, false);
    if (!v) {
      res.status = 404;
      res.set_content(v.status().message() + "\n", "text/plain");
      return;
    }
    res.set_content(render_report(*v), "text/html; charset=utf-8");
  });
  svr.Get(R"(/jobs/([^/]+)/(events\.jsonl|metrics\.jsonl|summary\.json))",
          [&](const httplib::Request& req, httplib::Response& res) {
            auto rec = lookup(req.matches[1], res);
            if (!rec) return;
            const std::string file = rec->workdir + "/" + std::string(req.matches[2]);
            std::error_code ec;
            if (!fs::is_regular_file(file, ec)) {
              res.status = 404;
              res.set_content("not written (yet)\n", "text/plain");
              return;
            }
            res.set_content(slurp(file), "text/plain; charset=utf-8");
          });
  int bound = port;
  if (port == 0) {
    bound = svr.bind_to_any_port(address);
    if (bound <= 0) {
      std::fprintf(stderr, "mobula history serve: cannot listen on %s (any port)\n", address.c_str());
      return 1;
    }
  } else if (!svr.bind_to_port(address, port)) {
    std::fprintf(stderr, "mobula history serve: cannot listen on %s:%d (in use?); try --port 0 for any free port\n",
                 address.c_str(), port);
    return 1;
  }
  std::printf("mobula history serve: http://%s:%d/ (read-only; Ctrl-C stops)\n", address.c_str(), bound);
  std::fflush(stdout);
  std::thread server([&] { svr.listen_after_bind(); });
  int sig = 0;
  sigwait(&stop, &sig);
  svr.stop();
  server.join();
  std::printf("mobula history serve: stopped (signal %d)\n", sig);
  return 0;
}

}  // namespace mobula::launch
