util h
