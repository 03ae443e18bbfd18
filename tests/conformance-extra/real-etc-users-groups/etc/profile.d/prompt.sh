export PS1="\u@app \w$ "
