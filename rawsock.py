import socket, sys, os
p=sys.argv[1]; msg=sys.argv[2].encode()+b'\n'
s=socket.socket(socket.AF_UNIX); s.connect(p); s.sendall(msg)
s.settimeout(10); out=b''
try:
    while True:
        b=s.recv(65536)
        if not b: break
        out+=b
except Exception as e: out+=repr(e).encode()
print(out.decode(errors='replace')[:1500])
