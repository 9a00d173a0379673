"""Capture filters: tcpdump expressions as classic BPF, checked, then C for the sampler.

The pieces, in the order a filter travels:
  libpcap   compiles an expression into cBPF (on the controller, or on a host that has
            libpcap for a local `xdpcap capture`)
  cbpf      the instruction list, its canonical text (what crosses SSH and keys the
            program cache) and the checker every program passes before translation
  to_c      the C function the sampler inlines: the checked program, made safe for the
            BPF verifier
  spec      what a capture carries: the expression and its program per link type
"""
