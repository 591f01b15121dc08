# Test-only Ansible connection plugin: run tasks inside a booted systemd-nspawn container.
# Not shipped with the roles. The container shares nothing with Ansible but the kernel, so every
# command goes through `nsenter --target PID --all` (like tests/system/nspawn.py does) and files
# are streamed through `cat` inside the container (works for tmpfs paths such as /run too).
from __future__ import annotations

DOCUMENTATION = """
    name: nsenter
    short_description: run tasks inside a running container's namespaces (test harness)
    description:
        - Executes commands with C(nsenter --target PID --all --root --wdns=/) as root of the container.
    author: bao-kms-provider authors
    options:
        nsenter_pid:
            description: Host PID of the container's PID 1.
            type: int
            required: true
            vars:
                - name: ansible_nsenter_pid
"""

import os
import subprocess

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

display = Display()

CONTAINER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "LANG": "C.UTF-8", "HOME": "/root", "TERM": "dumb"}


class Connection(ConnectionBase):
    """nsenter into a container's namespaces."""

    transport = "nsenter"
    has_pipelining = True
    default_user = "root"

    def _prefix(self):
        pid = self.get_option("nsenter_pid")
        return ["nsenter", "--target=%d" % int(pid), "--all", "--root", "--wdns=/", "--"]

    def _connect(self):
        if not self._connected:
            pid = int(self.get_option("nsenter_pid"))
            if not os.path.exists("/proc/%d" % pid):
                raise AnsibleConnectionFailure("container PID %d does not exist" % pid)
            display.vvv("NSENTER CONNECTION to PID %d" % pid, host=self._play_context.remote_addr)
            self._connected = True
        return self

    def _run(self, argv, stdin=None):
        p = subprocess.Popen(self._prefix() + argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=CONTAINER_ENV)
        out, err = p.communicate(stdin)
        return p.returncode, out, err

    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        display.vvv("NSENTER EXEC %s" % cmd, host=self._play_context.remote_addr)
        return self._run(["/bin/sh", "-c", cmd], in_data)

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        display.vvv("NSENTER PUT %s TO %s" % (in_path, out_path), host=self._play_context.remote_addr)
        try:
            with open(in_path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise AnsibleError("cannot read %s: %s" % (in_path, e))
        rc, out, err = self._run(["/bin/sh", "-c", 'cat > "$1"', "sh", out_path], data)
        if rc != 0:
            raise AnsibleError("failed to write %s in the container: %s" % (out_path, err.decode(errors="replace")))

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        display.vvv("NSENTER FETCH %s TO %s" % (in_path, out_path), host=self._play_context.remote_addr)
        rc, out, err = self._run(["cat", "--", in_path])
        if rc != 0:
            raise AnsibleError("failed to read %s in the container: %s" % (in_path, err.decode(errors="replace")))
        with open(out_path, "wb") as f:
            f.write(out)

    def close(self):
        self._connected = False

