#!/usr/bin/env python3
"""Build steps of the Java bindings that meson's custom_target cannot express alone.

SWIG writes one .java file per wrapped type, a set that follows include/isl.h, so the
generated sources go to a directory that this script owns instead of a fixed output list.

  build_java.py swig STAMP JAVA_DIR -- SWIG_COMMAND...
      Empties JAVA_DIR, runs SWIG_COMMAND (which writes its .java files into JAVA_DIR and
      the JNI wrapper as a declared output), and lists the generated files in STAMP.
  build_java.py jar JAR CLASSES_DIR STAMP JAVAC JAR_TOOL RELEASE SOURCES...
      Compiles the files listed in STAMP and SOURCES with `javac --release RELEASE`
      into CLASSES_DIR (emptied first) and packs them into JAR.
"""
import os
import shutil
import subprocess
import sys


def fresh_dir(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)


def swig(stamp, java_dir, command):
    fresh_dir(java_dir)
    subprocess.run(command, check=True)
    generated = sorted(os.path.join(java_dir, f) for f in os.listdir(java_dir) if f.endswith(".java"))
    if not generated:
        sys.exit("build_java.py: SWIG generated no .java files in " + java_dir)
    with open(stamp, "w") as f:
        f.write("\n".join(generated) + "\n")


def jar(out_jar, classes_dir, stamp, javac, jar_tool, release, sources):
    with open(stamp) as f:
        generated = [line.strip() for line in f if line.strip()]
    fresh_dir(classes_dir)
    subprocess.run([javac, "--release", release, "-encoding", "UTF-8", "-Xlint:all,-options",
                    "-d", classes_dir] + generated + sources, check=True)
    tmp = out_jar + ".tmp"
    subprocess.run([jar_tool, "--create", "--file", tmp, "-C", classes_dir, "."], check=True)
    os.replace(tmp, out_jar)


def main(argv):
    if len(argv) >= 4 and argv[0] == "swig" and argv[3] == "--":
        swig(argv[1], argv[2], argv[4:])
    elif len(argv) >= 7 and argv[0] == "jar":
        jar(argv[1], argv[2], argv[3], argv[4], argv[5], argv[6], argv[7:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
