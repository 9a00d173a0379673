"""The examples every command's --help ends with (bcc's tools do the same): one table,
keyed by the command's words, applied to the parsers once they are built."""

from __future__ import annotations

import argparse

EXAMPLES: dict[str, str] = {
    "run": """\
  xdpcap run -i inventory.yml --iface eth0 --duration 30
  xdpcap run -i inventory.yml --limit 'web:&prod' -Q in -- tcp port 443
  xdpcap run -i inventory.yml --count 1000 --sample-rate 10 -w all.pcapng
  xdpcap run -i inventory.yml -w - | wireshark -k -i -     # live, while it captures""",
    "check": """\
  xdpcap check -i inventory.yml --iface eth0
  xdpcap check -i inventory.yml --limit web01""",
    "collect": """\
  xdpcap collect xdpcap-runs/20261206T041500Z
  xdpcap collect xdpcap-runs/20261206T041500Z --wait 300""",
    "capture": """\
  sudo xdpcap capture -i eth0 -w eth0.pcapng --duration 10
  sudo xdpcap capture -i eth0 -w dns.pcapng -Q out -- udp port 53""",
    "build-agent": """\
  xdpcap build-agent -o xdpcap-agent.pyz
  scp xdpcap-agent.pyz web1:
  ssh web1 sudo python3 xdpcap-agent.pyz capture -i eth0 -w eth0.pcapng --duration 5""",
    "merge": """\
  xdpcap merge -w merged.pcapng web1.pcapng web2.pcapng lb.pcap
  xdpcap merge --no-clock-correction -w merged.pcapng hosts/*.pcapng
  xdpcap merge --plain -w merged.pcapng a.pcapng b.pcapng   # as mergecap: no pass""",
    "report": """\
  xdpcap report xdpcap-runs/20261206T041500Z          # tables; writes its report.html
  xdpcap report merged.pcapng.json                    # what `xdpcap merge` wrote
  xdpcap report --no-page xdpcap-runs/20261206T041500Z""",
    "extcap": """\
  xdpcap extcap install          # then pick 'xdpcap' in Wireshark's interface list
  tshark -i xdpcap -o extcap.xdpcap.inventory:inventory.yml -o extcap.xdpcap.iface:eth0
  xdpcap extcap uninstall""",
    "lab": """\
  sudo xdpcap lab up --hosts 3
  sudo xdpcap run -i "$(xdpcap lab inventory)" --iface eth0 --duration 5
  sudo xdpcap lab down""",
    "lab up": "  sudo xdpcap lab up --hosts 5 --name demo",
    "lab down": "  sudo xdpcap lab down --name demo",
    "lab status": "  xdpcap lab status --json",
    "lab inventory": '  xdpcap run -i "$(xdpcap lab inventory)" --iface eth0',
    "lab traffic": "  sudo xdpcap lab traffic --seconds 5",
    "lab vagrant-inventory": """\
  vagrant up && xdpcap lab vagrant-inventory > vagrant.yml
  vagrant ssh-config > ssh.cfg && xdpcap lab vagrant-inventory --ssh-config ssh.cfg""",
    "lab vagrant-box": """\
  sudo xdpcap lab libvirt start && sudo xdpcap lab vagrant-box
  sudo xdpcap lab vagrant-box --mirror http://ftp.de.debian.org/debian""",
    "lab libvirt": """\
  sudo xdpcap lab libvirt start     # where no init system runs (containers, CI)
  sudo xdpcap lab libvirt stop      # only the daemons 'start' started""",
    "demo": """\
  sudo xdpcap demo
  sudo xdpcap demo --hosts 5 --duration 8 --keep-lab""",
}


def add_examples(parser: argparse.ArgumentParser, words: str = "") -> None:
    """Give `parser` (and every sub-command under it) its examples as the --help's end."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                path = f"{words} {name}".strip()
                examples = EXAMPLES.get(path)
                if examples is not None and child.epilog is None:
                    child.epilog = f"examples:\n{examples}"
                    child.formatter_class = argparse.RawDescriptionHelpFormatter
                add_examples(child, path)
