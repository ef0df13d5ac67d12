// The `mobula` executable as a user meets it: check, version, help and bad input.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "core/runtime/process.h"

namespace mobula {
namespace {

const std::string kExe = MOBULA_EXE;
const std::string kSrc = MOBULA_TEST_SOURCE_DIR;

ProcessResult mobula(std::vector<std::string> args) {
  args.insert(args.begin(), kExe);
  auto r = run_capture(args, 60);
  EXPECT_TRUE(r.is_ok()) << r.status().message();
  return r.is_ok() ? *r : ProcessResult{-1, "", ""};
}

class CliBadSpec : public ::testing::Test {
 protected:
  std::string write(const std::string& name, const std::string& text) {
    const auto dir = std::filesystem::temp_directory_path() / ("mobula_cli_test_" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    const auto p = (dir / name).string();
    std::ofstream(p) << text;
    return p;
  }
  // Exit code 2, nothing on stdout, exactly one line on stderr that starts with FILE:LINE: KEY:
  void expect_one_line_error(const ProcessResult& r, const std::string& prefix) {
    EXPECT_EQ(r.exit_code, 2) << r.err;
    EXPECT_EQ(r.out, "");
    ASSERT_FALSE(r.err.empty());
    EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
    EXPECT_TRUE(r.err.starts_with(prefix)) << r.err;
  }
};

TEST(Cli, CheckPrintsTheLayout) {
  const auto r = mobula({"check", kSrc + "/examples/three-roles.toml"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("ranks      4: trainer 2, rollout 1, embed 1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("links      trainer+rollout, trainer+embed, rollout+embed"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("   3  embed     0/1"), std::string::npos) << r.out;
}

TEST(Cli, CheckAllShowsOrigins) {
  const auto r = mobula({"check", kSrc + "/examples/minimal.toml", "--all", "--set", "job.seed=5"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("job.seed                   = 5                    # --set:1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("# default"), std::string::npos);
}

TEST_F(CliBadSpec, TypoedKey) {
  const auto p = write("typo.toml", "[job]\nname = \"x\"\nsteps = 2\n\n[roles.trainer]\nrnaks = 2\n");
  expect_one_line_error(mobula({"check", p}),
                        p + ":6: roles.trainer.rnaks: unknown key; did you mean 'roles.trainer.ranks'?");
}

TEST_F(CliBadSpec, WrongType) {
  const auto p = write("type.toml", "[job]\nname = \"x\"\nseed = \"abc\"\n[roles.trainer]\nranks = 2\n");
  expect_one_line_error(mobula({"check", p}), p + ":3: job.seed: expected an integer, got string \"abc\"");
}

TEST_F(CliBadSpec, ImpossibleLayout) {
  const auto p = write("layout.toml", "[job]\nname = \"x\"\n[roles.trainer]\nranks = 2\n[roles.rollout]\nranks = 2\n");
  expect_one_line_error(mobula({"check", p, "--np", "3"}), p + ":3: roles: role ranks add up to 4");
  expect_one_line_error(mobula({"run", p, "--np", "3"}), p + ":3: roles: role ranks add up to 4");
  const auto z = write("zero.toml", "[job]\nname = \"x\"\n[roles.trainer]\nranks = 0\n[roles.rollout]\nranks = 2\n");
  expect_one_line_error(mobula({"check", z}), z + ":4: roles.trainer.ranks: a job needs at least 1 trainer rank");
}

TEST_F(CliBadSpec, BadOverride) {
  expect_one_line_error(mobula({"check", kSrc + "/examples/minimal.toml", "--set", "job.stepz=3"}),
                        "--set:1: job.stepz: unknown key; did you mean 'job.steps'?");
}

TEST(Cli, UsageErrorsExit2) {
  EXPECT_EQ(mobula({}).exit_code, 2);
  EXPECT_EQ(mobula({"frobnicate"}).exit_code, 2);
  EXPECT_EQ(mobula({"check", "/nonexistent.toml"}).exit_code, 2);
}

TEST(Cli, HelpOnEverySubcommand) {
  for (const char* sub : {"check", "run", "worker", "version"}) {
    const auto r = mobula({sub, "--help"});
    EXPECT_EQ(r.exit_code, 0) << sub;
    EXPECT_NE(r.out.find("Usage"), std::string::npos) << sub << ": " << r.out;
  }
}

TEST(Cli, VersionListsComponents) {
  const auto r = mobula({"version"});
  ASSERT_EQ(r.exit_code, 0);
  for (const char* k : {"mobula", "compiler", "mpi", "kokkos", "ucx", "cuda", "nccl", "hdf5"})
    EXPECT_NE(("\n" + r.out).find(std::string("\n") + k + " "), std::string::npos) << k << " missing in:\n" << r.out;
  EXPECT_NE(r.out.find("(parallel)"), std::string::npos) << r.out;
  // OpenBLAS on Debian: the core it runs. The user's OPENBLAS_CORETYPE reaches it (no re-exec, no
  // "set by mobula").
  ASSERT_EQ(setenv("OPENBLAS_CORETYPE", "Haswell", 1), 0);
  const auto h = mobula({"version"});
  ASSERT_EQ(unsetenv("OPENBLAS_CORETYPE"), 0);
  if (r.out.find("\nblas ") != std::string::npos) {
    EXPECT_NE(h.out.find("OpenBLAS core Haswell\n"), std::string::npos) << h.out;
  }
}

}  // namespace
}  // namespace mobula

namespace mobula {
namespace {

TEST(CliSubmit, DryRunPrintsAHetScriptAndWritesNothing) {
  const auto dir = std::filesystem::temp_directory_path() / ("mobula_cli_submit_" + std::to_string(getpid()));
  auto r = mobula({"submit", kSrc + "/examples/hetjob.toml", "--dry-run", "--set", "job.workdir=" + dir.string(),
                   "--set", "slurm.embed.partition=cpu", "--set", "slurm.trainer.partition=gpu"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("#SBATCH hetjob\n"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("--het-group=0,1"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(" worker " + dir.string() + "/spec.toml "), std::string::npos) << r.out;
  EXPECT_FALSE(std::filesystem::exists(dir)) << "--dry-run created the work dir";
}

TEST(CliSubmit, BadSlurmKeyIsOneLine) {
  auto r = mobula({"submit", kSrc + "/examples/hetjob.toml", "--dry-run", "--set", "slurm.partiton=gpu"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_EQ(r.out, "");
  EXPECT_NE(r.err.find("--set:1: slurm.partiton"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("slurm.partition"), std::string::npos) << "no did-you-mean: " << r.err;
}

}  // namespace
}  // namespace mobula
