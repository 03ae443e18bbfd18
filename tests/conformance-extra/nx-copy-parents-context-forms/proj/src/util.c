util c
