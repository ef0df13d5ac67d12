// The `mobula` executable: everything lives in mobula_launch.
#include "launch/commands.h"

int main(int argc, char** argv) {
  return mobula::launch::mobula_main(argc, argv);
}
