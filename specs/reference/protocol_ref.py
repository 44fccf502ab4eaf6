#!/usr/bin/env python3
"""Independent re-implementation of the challenge derivation of specs/protocol.md (sections 7-9):
merlin transcripts over STROBE-128/Keccak-f[1600], the session proof of work, the ChaCha20
keystream and the three sampling strategies, written from the document, in plain Python.

It recomputes every proof-of-work nonce, pow output, challenge seed and sampled cell set in
specs/vectors/protocol.json and exits non-zero at the first mismatch. It also re-derives the
cost weights from the statements' geometry, checks the closed form of their cumulative sums
(section 9.4) against them and against random small geometries, and draws the cost-weighted
vectors again with the exact block sampler, for several block counts. It takes the statement's
transcript rows and cost weights from the vectors (the byte encodings of those rows are specified
in section 7.2 and checked by tests/protocol_vectors.rs).

Usage: python3 specs/reference/protocol_ref.py [specs/vectors/protocol.json]
"""
import copy
import json
import struct
import sys

# Independent merlin/STROBE-128 per specs/protocol.md section 7.1
RC=[0x0000000000000001,0x0000000000008082,0x800000000000808A,0x8000000080008000,0x000000000000808B,0x0000000080000001,0x8000000080008081,0x8000000000008009,0x000000000000008A,0x0000000000000088,0x0000000080008009,0x000000008000000A,0x000000008000808B,0x800000000000008B,0x8000000000008089,0x8000000000008003,0x8000000000008002,0x8000000000000080,0x000000000000800A,0x800000008000000A,0x8000000080008081,0x8000000000008080,0x0000000080000001,0x8000000080008008]
ROT=[[0,36,3,41,18],[1,44,10,45,2],[62,6,43,15,61],[28,55,25,21,56],[27,20,39,8,14]]
M=(1<<64)-1
def rol(x,n): n%=64; return ((x<<n)|(x>>(64-n)))&M if n else x
def keccak(st):
    A=[[int.from_bytes(st[8*(x+5*y):8*(x+5*y)+8],'little') for y in range(5)] for x in range(5)]
    for rc in RC:
        C=[A[x][0]^A[x][1]^A[x][2]^A[x][3]^A[x][4] for x in range(5)]
        D=[C[(x-1)%5]^rol(C[(x+1)%5],1) for x in range(5)]
        A=[[A[x][y]^D[x] for y in range(5)] for x in range(5)]
        B=[[0]*5 for _ in range(5)]
        for x in range(5):
            for y in range(5):
                B[y][(2*x+3*y)%5]=rol(A[x][y],ROT[x][y])
        A=[[B[x][y]^((~B[(x+1)%5][y])&B[(x+2)%5][y]) for y in range(5)] for x in range(5)]
        A[0][0]^=rc
    out=bytearray(200)
    for x in range(5):
        for y in range(5):
            out[8*(x+5*y):8*(x+5*y)+8]=A[x][y].to_bytes(8,'little')
    return out
R=166
I,A_,C,T,M_,K=1,2,4,8,16,32
class Strobe:
    def __init__(s):
        st=bytearray(200); st[0:6]=bytes([1,0xa8,1,0,1,0x60]); st[6:18]=b"STROBEv1.0.2"
        s.st=keccak(st); s.pos=0; s.pos_begin=0; s.cur=0
        s.meta_ad(b"Merlin v1.0",False)
    def run_f(s):
        s.st[s.pos]^=s.pos_begin; s.st[s.pos+1]^=0x04; s.st[R+1]^=0x80
        s.st=keccak(s.st); s.pos=0; s.pos_begin=0
    def absorb(s,b):
        for x in b:
            s.st[s.pos]^=x; s.pos+=1
            if s.pos==R: s.run_f()
    def squeeze(s,n):
        o=bytearray()
        for _ in range(n):
            o.append(s.st[s.pos]); s.st[s.pos]=0; s.pos+=1
            if s.pos==R: s.run_f()
        return bytes(o)
    def begin_op(s,flags,more):
        if more: return
        old=s.pos_begin; s.pos_begin=s.pos+1; s.cur=flags
        s.absorb(bytes([old,flags]))
        if flags&(C|K) and s.pos!=0: s.run_f()
    def meta_ad(s,b,more): s.begin_op(M_|A_,more); s.absorb(b)
    def ad(s,b,more): s.begin_op(A_,more); s.absorb(b)
    def prf(s,n,more): s.begin_op(I|A_|C,more); return s.squeeze(n)
class Transcript:
    def __init__(s,label):
        s.s=Strobe(); s.append(b"dom-sep",label)
    def append(s,label,m):
        s.s.meta_ad(label,False); s.s.meta_ad(len(m).to_bytes(4,'little'),True); s.s.ad(m,False)
    def u64(s,label,x): s.append(label,x.to_bytes(8,'little'))
    def challenge(s,label,n):
        s.s.meta_ad(label,False); s.s.meta_ad(n.to_bytes(4,'little'),True); return s.s.prf(n,False)
    def clone(s): return copy.deepcopy(s)
# merlin's own known answer (merlin crate, transcript.rs test `equivalence_simple`)
_t=Transcript(b"test protocol"); _t.append(b"some label",b"some data")
assert _t.challenge(b"challenge",32).hex()=="d5a21972d0d5fe320c0d263fac7fffb8145aa640af6e9bca177c03c7efcf0615"


v=json.load(open(sys.argv[1] if len(sys.argv) > 1 else 'specs/vectors/protocol.json'))
st={x['name']:x for x in v['statements']}
codes={'uniform':1,'stratified':2,'cost-weighted':3}
def base(name):
    t=Transcript(b"veritrace/protocol/v1")
    for r in st[name]['transcript_rows']:
        t.append(r['label'].encode(),bytes.fromhex(r['value_hex']))
    return t
def params_t(name,k,strat,p):
    t=base(name); t.u64(b"samples",k); t.append(b"strategy",bytes([codes[strat]])); t.u64(b"pow-bits",p); return t
def lz(b):
    n=0
    for x in b:
        if x==0: n+=8
        else: return n+8-x.bit_length()
    return n
def pow_ok(pt,p,nonce):
    if p==0: return nonce==0
    t=pt.clone(); t.u64(b"pow-nonce",nonce); return lz(t.challenge(b"pow",32))>=p
def pow_out(pt,nonce):
    t=pt.clone(); t.u64(b"pow-nonce",nonce); return t.challenge(b"pow",32).hex()
def seed(pt,nonce,rnd):
    t=pt.clone(); t.u64(b"pow-nonce",nonce); t.u64(b"round",rnd); return t.challenge(b"challenge-seed",32)
# chacha20
def rotl(a,b): return ((a<<b)|(a>>(32-b)))&0xffffffff
def qr(x,a,b,c,d):
    x[a]=(x[a]+x[b])&0xffffffff; x[d]^=x[a]; x[d]=rotl(x[d],16)
    x[c]=(x[c]+x[d])&0xffffffff; x[b]^=x[c]; x[b]=rotl(x[b],12)
    x[a]=(x[a]+x[b])&0xffffffff; x[d]^=x[a]; x[d]=rotl(x[d],8)
    x[c]=(x[c]+x[d])&0xffffffff; x[b]^=x[c]; x[b]=rotl(x[b],7)
class Rng:
    def __init__(s,key,stream=0):
        s.key=list(struct.unpack('<8I',key)); s.ctr=0; s.buf=b''; s.stream=stream
    def block(s):
        st=[0x61707865,0x3320646e,0x79622d32,0x6b206574]+s.key+[s.ctr&0xffffffff,s.ctr>>32,s.stream&0xffffffff,s.stream>>32]
        x=st[:]
        for _ in range(10):
            qr(x,0,4,8,12);qr(x,1,5,9,13);qr(x,2,6,10,14);qr(x,3,7,11,15)
            qr(x,0,5,10,15);qr(x,1,6,11,12);qr(x,2,7,8,13);qr(x,3,4,9,14)
        s.ctr+=1
        return struct.pack('<16I',*[(a+b)&0xffffffff for a,b in zip(x,st)])
    def u64(s):
        if len(s.buf)<8: s.buf+=s.block()
        w=int.from_bytes(s.buf[:8],'little'); s.buf=s.buf[8:]; return w
def unif(rng,n,b=64):
    z=n*(((1<<b)-1)//n)
    while True:
        x=rng.u64() if b==64 else rng.u64()|(rng.u64()<<64)
        if x<z: return x%n
def floyd(rng,n,m):
    S=set()
    for t in range(n-m,n):
        x=unif(rng,t+1)
        S.add(t if x in S else x)
    return S
def sample(name,k,strat,sd):
    s=st[name]; N=s['cells']; C=s['chunks_per_layer']; L=N//C
    assert k>=1
    if k>=N: return list(range(N))
    rng=Rng(sd)
    if strat=='uniform': return sorted(floyd(rng,N,k))
    if strat=='stratified':
        q=k//L; E=floyd(rng,L,k%L); out=set()
        for l in range(L):
            kl=min(q+(l in E),C); out|={l*C+m for m in floyd(rng,C,kl)}
        return sorted(out)
    w=list(s['cost_weights']); out=[]
    for _ in range(k):
        W=sum(w); x=unif(rng,W,128); acc=0
        for i,wi in enumerate(w):
            acc+=wi
            if acc>x: break
        out.append(i); w[i]=0
    return sorted(out)
# The exact cost-weighted sampler of section 9.4 (no per-cell state): the closed form F(i) of
# the cumulative weight, B block weights (a Fenwick tree in Rust, a linear scan here), and binary
# searches inside a block. It must draw exactly what the direct algorithm above draws, for
# every block count.
def geom(name):
    sj=json.loads(st[name]['statement_json']); g=sj['geometry']; d=sj['dependency']
    dep=('window',d['window']['size']) if isinstance(d,dict) else (d,0)
    return g['layers'],g['tokens'],g['hidden'],g['chunk'],dep
def weights_direct(L,T,d,c,dep):
    C=-(-T//c); out=[]
    for l in range(L):
        for j in range(C):
            a=j*c; e=min(a+c,T); r=e-a
            if l==0: out.append(r); continue
            u={'causal':0,'bidirectional':0}.get(dep[0],max(0,a-(dep[1]-1)) if dep[0]=='window' else 0)
            v_=T if dep[0]=='bidirectional' else e
            out.append(r*(6*d+(v_-u)))
    return out
def prefix_closed(L,T,d,c,dep):
    C=-(-T//c); w1=max(dep[1]-1,0)
    def full(j):  # chunks m<j of a layer >= 1, all full
        if dep[0]=='causal': ctx=c*c*j*(j+1)//2
        elif dep[0]=='bidirectional': ctx=j*c*T
        else:
            m0=w1//c+1; clip=(c*c*(m0+j-1)*(j-m0)//2-c*w1*(j-m0)) if j>m0 else 0
            ctx=c*c*j*(j+1)//2-clip
        return 6*d*j*c+ctx
    a=(C-1)*c; ctx_last=T-max(0,a-w1) if dep[0]=='window' else T
    S1=full(C-1)+(T-a)*(6*d+ctx_last)
    def F(i):
        l,j=divmod(i,C)
        if l==0: return min(j*c,T)
        return T+(l-1)*S1+(S1 if j==C else full(j))
    return F
def sample_exact(name,k,sd,B):
    L,T,d,c,dep=geom(name); C=-(-T//c); N=L*C; F=prefix_closed(L,T,d,c,dep)
    B=min(N,B); size=-(-N//B); B=-(-N//size)
    bw=[F(min((b+1)*size,N))-F(b*size) for b in range(B)]
    rng=Rng(sd); removed={}; out=[]
    for _ in range(k):
        x=unif(rng,sum(bw),128); b=0
        while x>=bw[b]: x-=bw[b]; b+=1
        lo,hi=b*size,min((b+1)*size,N); base=F(lo); rc=removed.setdefault(b,[])
        pre=[0]
        for r in rc: pre.append(pre[-1]+F(r+1)-F(r))
        ends=rc+[hi]; t=0
        while F(ends[t])-base-pre[t]<=x: t+=1
        glo=lo if t==0 else rc[t-1]+1; y=x+base+pre[t]; i=glo; j=ends[t]
        while i<j:
            m=(i+j)//2
            if F(m+1)<=y: i=m+1
            else: j=m
        w=F(i+1)-F(i); bw[b]-=w; rc.append(i); rc.sort(); out.append(i)
    return sorted(out)
n=0
for name in st:
    L,T,d,c,dep=geom(name); F=prefix_closed(L,T,d,c,dep); w=st[name]['cost_weights']
    assert weights_direct(L,T,d,c,dep)==w,name
    acc=0
    for i in range(len(w)+1):
        assert F(i)==acc,(name,i); acc+=w[i] if i<len(w) else 0
    n+=1
import random
_r=random.Random(15)
for _ in range(300):
    L,T,c,d=_r.randint(1,5),_r.randint(1,40),_r.randint(1,8),_r.randint(1,9)
    dep=_r.choice([('causal',0),('bidirectional',0),('window',_r.randint(1,45))])
    F=prefix_closed(L,T,d,c,dep); w=weights_direct(L,T,d,c,dep); acc=0
    for i in range(len(w)+1):
        assert F(i)==acc,(L,T,c,d,dep,i); acc+=w[i] if i<len(w) else 0
n+=1
for x in v['sampling']+v['challenges']:
    if x['strategy']!='cost-weighted' or x['samples']>=st[x['statement']]['cells']: continue
    for B in (1,2,3,7,64,1<<16):
        assert sample_exact(x['statement'],x['samples'],bytes.fromhex(x['seed_hex']),B)==x['indices'],(x,B)
    n+=1
for c in v['challenges']:
    pt=params_t(c['statement'],c['samples'],c['strategy'],c['pow_bits'])
    nonce=next(x for x in range(1<<20) if pow_ok(pt,c['pow_bits'],x))
    assert nonce==c['pow_nonce'],(c,nonce)
    if c['pow_bits']: assert pow_out(pt,nonce)==c['pow_output_hex']
    sd=seed(pt,nonce,c['round']); assert sd.hex()==c['seed_hex'],c
    assert sample(c['statement'],c['samples'],c['strategy'],sd)==c['indices'],c
    n+=1
for x in v['sampling']:
    assert sample(x['statement'],x['samples'],x['strategy'],bytes.fromhex(x['seed_hex']))==x['indices'],x
    n+=1
s=v['session']
pt=params_t(s['statement'],s['samples'],s['strategy'],s['pow_bits'])
nonce=next(x for x in range(1<<20) if pow_ok(pt,s['pow_bits'],x)); assert nonce==s['pow_nonce']
assert pow_out(pt,nonce)==s['pow_output_hex']
for r in s['per_round']:
    sd=seed(pt,nonce,r['round']); assert sd.hex()==r['seed_hex']; assert sample(s['statement'],s['samples'],s['strategy'],sd)==r['indices']; n+=1
o=next(x for x in range(nonce+1,1<<20) if pow_ok(pt,s['pow_bits'],x)); assert o==s['other_valid_nonce']
assert pow_out(pt,o)==s['other_pow_output_hex']; assert seed(pt,o,1).hex()==s['other_round_1_seed_hex']
# Attention draws (section 4.4; transcript rows 13a and 17): the seeds from the transcript, each
# challenged cell's draw from ChaCha20 on the stream of its leaf index, and the opening sets of
# the section's table, computed here from the document.
for a in v['attention_draws']:
    name=a['statement']; sj=json.loads(st[name]['statement_json'])
    tl=sj['trace_level']['sub-layer-by-head']; H=tl['heads']; g=tl['kv_heads']; per=H//g
    G=sj['geometry']; c=G['chunk']; T=G['tokens']; C=st[name]['chunks_per_layer']
    assert sj['dependency']=='causal'
    pt=params_t(name,a['samples'],a['strategy'],a['pow_bits'])
    pt.append(b"attention-sample",struct.pack('<II',a['heads'],a['chunks']))
    nonce=next(x for x in range(1<<20) if pow_ok(pt,a['pow_bits'],x)); assert nonce==a['pow_nonce'],a
    t=pt.clone(); t.u64(b"pow-nonce",nonce); t.u64(b"round",a['round'])
    sd=t.challenge(b"challenge-seed",32); tau=t.challenge(b"attention-seed",32)
    assert sd.hex()==a['seed_hex'] and tau.hex()==a['attention_seed_hex'],a
    cells=sample(name,a['samples'],a['strategy'],sd); assert cells==a['indices'],a
    want={'hidden':set(),'context':set(),'kv':set(),'cell':set()}; draws=[]
    for i in cells:
        l,j=divmod(i,C); want['hidden'].add((l,j))
        if l==0: continue
        rng=Rng(tau,stream=i)
        hs=list(range(H)) if a['heads']>=H else sorted(floyd(rng,H,a['heads']))
        first=0; m=j-first
        cs=list(range(first,j)) if a['chunks']>=m else sorted(first+x for x in floyd(rng,m,a['chunks']))
        draws.append({'cell':[l,j],'leaf':i,'heads':hs,'chunks':cs})
        D=cs+[j]; sl=l-1; groups={h//per for h in hs}
        want['hidden'].update((l-1,x) for x in D); want['context'].update((sl,x) for x in D)
        want['cell'].add((sl,j))
        for h in range(g):
            want['kv'].update((sl*g+h,x) for x in (range(first,j+1) if h in groups else D))
    assert draws==a['draws'],(draws,a['draws'])
    for part,cs in want.items():
        assert sorted(cs)==[tuple(x) for x in a['opening'][part]],(part,sorted(cs),a['opening'][part])
    n+=1
# the draw of section 4.4's test vector (the by-head toy of 24 tokens: cell [2, 6], leaf 22)
_r2=Rng(bytes([7])*32,stream=22); assert sorted(floyd(_r2,4,2))==[0,2] and sorted(floyd(_r2,6,3))==[0,2,5]
n+=1
print(f"protocol_ref: {n} passed, 0 failed")
