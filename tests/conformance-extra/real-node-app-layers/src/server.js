const r = require("./routes/index");
console.log(r);
