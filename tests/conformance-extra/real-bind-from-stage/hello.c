int main() { return VERSION; }
