"""Programs the lab runs inside its hosts' namespaces, kept as Python files.

They are not imported: traffic.py reads each file's text and runs it with
`python3 -I -c TEXT ARGS...` through `ip netns exec`.
  echo_server.py  TCP and UDP echo on one dual-stack port; prints the port
  echo_client.py  TCP and UDP rounds to "addr,port" targets; prints the counts as JSON
"""
