import subprocess, sys, re, collections
data, pat = sys.argv[1], sys.argv[2]; depth=int(sys.argv[3])
out = subprocess.run(['perf','script','-i',data,'-F','comm,tid,ip,sym'], capture_output=True, text=True).stdout
stacks=[]; cur=[]
for line in out.split('\n'):
    if not line.strip():
        if cur: stacks.append(cur); cur=[]
        continue
    if line[0] in '\t ':
        parts=line.strip().split(None,1); s=parts[1] if len(parts)>1 else '?'
        s=re.sub(r'\+0x[0-9a-f]+$','',s); cur.append(s)
if cur: stacks.append(cur)
c=collections.Counter(); tot=len(stacks)
for st in stacks:
    idx=[i for i,f in enumerate(st) if re.search(pat,f)]
    if not idx: continue
    i=idx[-1]
    c[' <- '.join(x[:90] for x in st[i+1:i+1+depth])]+=1
for k,v in c.most_common(12): print(f'{100*v/tot:5.2f}% {k}')
