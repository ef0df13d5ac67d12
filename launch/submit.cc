// `mobula submit SPEC [--dry-run] [--set k=v]...`: renders the batch script into the job's work dir
// and hands it to sbatch. See slurm/batch_script.h for the rendering and docs/slurm.md for use.
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/runtime/files.h"
#include "core/runtime/spec.h"
#include "core/runtime/time_format.h"
#include "launch/commands.h"
#include "launch/registry.h"
#include "slurm/batch_script.h"
#include "slurm/jobs.h"

namespace mobula::launch {

namespace fs = std::filesystem;

Result<std::string> submit_spec(const SpecArgs& a, const std::vector<std::string>& sbatch_args, bool dry_run,
                                int* exit_code) {
  auto fail = [&](std::string msg, int code) -> Result<std::string> {
    if (exit_code) *exit_code = code;
    return Status::external(std::move(msg));
  };
  auto spec = load_spec(a.spec, a.sets);
  if (!spec) return fail(spec.status().message(), 2);
  std::error_code ec;
  const fs::path workdir = fs::absolute(spec->workdir, ec).lexically_normal();
  const fs::path exe = fs::canonical("/proc/self/exe", ec);
  if (ec) return fail("mobula submit: cannot resolve the mobula executable: " + ec.message(), 1);
  slurm::RenderOptions opt;
  opt.mobula_exe = exe.string();
  opt.spec_copy = (workdir / "spec.toml").string();
  opt.sets = a.sets;
  opt.workdir = workdir.string();
  opt.origin = fs::absolute(a.spec).lexically_normal().string();
  auto script = slurm::render_batch_script(*spec, opt);
  if (!script) return fail(script.status().message(), 2);
  if (dry_run) return script->text;

  std::ifstream in(a.spec, std::ios::binary);
  std::stringstream spec_text;
  spec_text << in.rdbuf();
  fs::create_directories(workdir, ec);
  if (ec || !in)
    return fail("mobula submit: " + (ec ? workdir.string() : a.spec) + ": " +
                    (ec ? ec.message() : std::string("cannot read the spec")),
                1);
  const auto rw = fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read;
  Status st = write_file_atomically(opt.spec_copy, spec_text.str(), /*durable=*/false, rw);
  if (st.is_ok())
    st = write_file_atomically(workdir / "sbatch.sh", script->text,
                               /*durable=*/false,
                               rw | fs::perms::owner_exec | fs::perms::group_exec | fs::perms::others_exec);
  if (!st.is_ok()) return fail("mobula submit: " + st.message(), 1);
  std::vector<std::string> args = sbatch_args;
  args.push_back((workdir / "sbatch.sh").string());
  auto id = slurm::sbatch(args);
  if (!id) return fail("mobula submit: " + id.status().message(), 1);
  JobRecord rec;
  rec.id = *id;
  rec.name = spec->name;
  rec.workdir = workdir.string();
  rec.spec = opt.origin;
  rec.submitted = utc_now(/*millis=*/false);
  if (Status reg = register_job(rec); !reg.is_ok())
    std::fprintf(stderr, "mobula submit: warning: job %s runs, but %s\n", id->c_str(), reg.message().c_str());
  std::printf("submitted job %s (%zu component%s); work dir %s, output %s/slurm-%s.out\n", id->c_str(),
              script->components.size(), script->components.size() > 1 ? "s" : "", workdir.c_str(), workdir.c_str(),
              id->c_str());
  std::fflush(stdout);
  return *id;
}

int cmd_submit(const SpecArgs& a, bool dry_run) {
  int code = 0;
  auto r = submit_spec(a, {}, dry_run, &code);
  if (!r) {
    std::fprintf(stderr, "%s\n", r.status().message().c_str());
    return code;
  }
  if (dry_run) std::fputs(r->c_str(), stdout);
  return 0;
}

}  // namespace mobula::launch
